"""The offline substitute describer: phrase ranking with CLIP, group = the members' shared feature, vocabulary checks."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from latteclip.data import build_dataset
from latteclip.describe.backend import Request
from latteclip.describe.clip_vocab import ClipVocabularyDescriber
from latteclip.engine.session import seed_everything
from latteclip.errors import LatteclipError
from latteclip.models import load_clip


@pytest.fixture(scope="module")
def describer():
    seed_everything(0)
    return ClipVocabularyDescriber(load_clip("latte-tiny", "random"), "land use")


@pytest.fixture(scope="module")
def images(eurosat_folder):
    train = build_dataset("eurosat", eurosat_folder, "train")
    return [train.load_image(i) for i in (0, 50, 100)]


def test_the_phrase_matching_the_feature_is_picked_first(describer):
    phrases, features, _ = describer.slots["scene"]
    for k in (0, 4, len(phrases) - 1):
        sentence = describer.sentence(features[k])
        assert sentence.startswith(f"land use with {phrases[k]} and "), sentence
    colours, colour_features, _ = describer.slots["colour"]
    assert f"{colours[3]} and " in describer.sentence(colour_features[3])


def test_a_group_is_described_by_what_its_members_share(describer, images):
    stop = threading.Event()
    alone = describer.describe([Request(images[0], "p")], stop)[0]
    # a group of one image twice has that image's attributes, whatever the collage looks like
    assert describer.describe([Request(images[1], "p", parts=(images[0], images[0]))], stop)[0] == alone
    features = describer.image_features(images[:2])
    shared = torch.nn.functional.normalize(features.mean(dim=0), dim=-1)
    assert describer.describe([Request(images[2], "p", parts=tuple(images[:2]))], stop)[0] == describer.sentence(shared)


def test_vocabulary_file_is_checked_and_named_in_the_model_id(describer, tmp_path):
    vocab = {"template": "a photo of {domain} with {phrase}.", "sentence": "{domain}: {what}.",
             "slots": {"what": {"pick": 1, "phrases": ["water", "trees"]}}}
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
