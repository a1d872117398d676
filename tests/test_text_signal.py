"""The description-signal analysis: what image texts know beside the pseudo-labels (reads labels, analysis only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latteclip.config import resolve_config
from latteclip.errors import LatteclipError
from latteclip.experiments.text_signal import run_text_signal, text_signal


def test_text_signal_by_hand():
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    texts = torch.tensor(
        [[1.0, 0.1], [0.1, 1.0], [1.0, 0.2], [-1.0, 0.1], [-1.0, 0.0]]
    )  # read as classes 0, 1, 0, 2, 2
    pseudo = torch.tensor([0, 0, 0, 1, 2])
    true = torch.tensor([0, 1, 2, 1, 2])
    s = text_signal(texts, classes, pseudo, true)
    assert (s.images, s.wrong_labels, s.classes) == (5, 2, 3)
    assert s.pseudo_label_acc == pytest.approx(0.6) and s.text_acc == pytest.approx(0.6)
    # of the two wrong pseudo-labels, image 1's text names its true class, image 2's repeats the wrong one
    assert s.text_true_where_wrong == pytest.approx(0.5) and s.text_repeats_wrong == pytest.approx(0.5)
    # pseudo-class 0's mean text (images 0-2) leans to class 0, class 1's (image 3) to class 2, class 2's to class 2
    assert s.classes_nearest_own == 2


def test_run_text_signal_reads_the_runs_texts_and_refuses_without_asking(tmp_path, eurosat_zip):
    from latteclip.data import build_dataset
    from latteclip.describe.jobs import image_hashes
    from latteclip.describe.store import DescriptionStore
    from latteclip.engine.session import dataset_options, seed_everything
    from latteclip.models import load_clip

    config = resolve_config(
        {
            "method": "latteclip",
            "dataset": "eurosat",
            "root": str(eurosat_zip),
            "model": "latte-tiny",
            "pretrained": "random",
            "limit": 40,
            "device": "cpu",
            "store": str(tmp_path / "texts.sqlite"),
        }
    )
    with pytest.raises(LatteclipError, match="TRUE labels"):
        run_text_signal(config)
    train = build_dataset("eurosat", str(eurosat_zip), "train", None, dataset_options(config))
    info = train.info
    class_texts = [info.templates[0].format(name) for name in info.classnames]
    with DescriptionStore(config.store) as store:  # each image's text is exactly its true class's text
        store.put_many(
            [
                (h, "image", "", "hand", "hand", class_texts[s.label], s.path, info.name, {}, "")
                for s, h in zip(train.samples, image_hashes(train, progress=False))
            ]
        )
    s = run_text_signal(config, reads_labels=True)
    # the zero-shot labels of the same random tiny model, computed here directly
    seed_everything(config.seed)  # as the run does before it builds the random weights
    loaded = load_clip("latte-tiny", "random", "cpu")
    with torch.no_grad():
        images = torch.stack([loaded.eval_transform()(train.load_image(i)) for i in range(len(train))])
        u = F.normalize(loaded.model.encode_image(images), dim=-1)
        z = F.normalize(loaded.model.encode_text(loaded.tokenizer(class_texts)), dim=-1)
    right = int(((u @ z.t()).argmax(-1) == torch.tensor([x.label for x in train.samples])).sum())
    assert s.images == 40 and s.wrong_labels == 40 - right and s.pseudo_label_acc == pytest.approx(right / 40)
    assert s.text_acc == 1.0 and s.text_true_where_wrong == 1.0 and s.text_repeats_wrong == 0.0
