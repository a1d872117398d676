"""The offline substitute describer: phrase ranking with CLIP, group = the collage cells' shared feature,
vocabularies."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from latteclip.data import build_dataset
from latteclip.data.collage import make_collage
from latteclip.describe.backend import Request
from latteclip.describe.clip_vocab import ClipVocabularyDescriber, bundled_vocabulary, collage_cells
from latteclip.engine.session import seed_everything
from latteclip.errors import LatteclipError
from latteclip.models import load_clip


@pytest.fixture(scope="module")
def describer():
    seed_everything(0)
    return ClipVocabularyDescriber(load_clip("latte-tiny", "random"), "land use", dataset="eurosat")


@pytest.fixture(scope="module")
def images(eurosat_folder):
    train = build_dataset("eurosat", eurosat_folder, "train")
    return [train.load_image(i) for i in (0, 50, 100)]


def test_the_phrase_matching_the_feature_is_picked_first(describer):
    phrases, features, _ = describer.slots["object"]
    for k in (0, 4, len(phrases) - 1):
        sentence = describer.sentence(features[k])
        assert sentence.startswith(f"{phrases[k]} with "), sentence
    colours, colour_features, _ = describer.slots["colour"]
    assert f"{colours[3]} and " in describer.sentence(colour_features[3])


def test_each_dataset_reads_its_domain_vocabulary():
    assert bundled_vocabulary("eurosat") == "vocabularies/land_use.json"
    assert (
        bundled_vocabulary("fmnist") == bundled_vocabulary("fmnist-heldout-blur-noise") == "vocabularies/clothing.json"
    )
    assert bundled_vocabulary("dtd") == "attribute_vocab.json"  # no domain file: the generic attributes


def test_a_group_is_described_from_its_collage_cells(describer, images):
    stop = threading.Event()
    collage = make_collage(images[:2])
    cells = collage_cells(collage, [image.size for image in images[:2]])
    assert [c.size for c in cells] == [(326, 326), (326, 326)]  # 1x2 grid of the 672 px canvas with a 20 px gap
    assert cells[1] == collage.crop((346, 173, 672, 499))  # the second image, centred in the right half
    features = describer.image_features(cells)
    shared = torch.nn.functional.normalize(features.mean(dim=0), dim=-1)
    group = describer.describe([Request(collage, "p", parts=tuple(images[:2]))], stop)[0]
    assert group == describer.sentence(shared)
    # the same picture twice: the group shares that picture's attributes
    twice = make_collage([images[0], images[0]])
    alone = describer.describe([Request(collage_cells(twice, [images[0].size] * 2)[0], "p")], stop)[0]
    assert describer.describe([Request(twice, "p", parts=(images[0], images[0]))], stop)[0] == alone


def test_vocabulary_file_is_checked_and_named_in_the_model_id(describer, tmp_path):
    vocab = {
        "template": "a photo of {domain} with {phrase}.",
        "sentence": "{domain}: {what}.",
        "slots": {"what": {"pick": 1, "phrases": ["water", "trees"]}},
    }
    path = tmp_path / "v.json"
    path.write_text(json.dumps(vocab))
    custom = ClipVocabularyDescriber(describer.loaded, "land use", vocabulary=path)
    assert custom.model != describer.model and custom.model.startswith("clip-vocab:latte-tiny:random:")
    assert custom.sentence(custom.slots["what"][1][1]) == "land use: trees."
    for broken, message in [
        ({**vocab, "slots": {}}, "needs 'slots'"),
        ({**vocab, "slots": {"what": {"pick": 3, "phrases": ["a"]}}}, "picks 3 of 1"),
        ({**vocab, "sentence": "{domain} {colour}"}, "not a slot"),
        ({**vocab, "template": "a photo"}, "containing {phrase}"),
    ]:
        path.write_text(json.dumps(broken))
        with pytest.raises(LatteclipError, match=message):
            ClipVocabularyDescriber(describer.loaded, "land use", vocabulary=path)
