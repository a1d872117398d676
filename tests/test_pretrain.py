"""`latteclip pretrain`: captions of the true class, the weights cache, resume to the same weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latteclip.cli import main
from latteclip.config import resolve_config
from latteclip.data import build_dataset
from latteclip.describe.clip_vocab import read_vocabulary
from latteclip.engine import pretraining
from latteclip.engine.pretraining import pretrain_key, pretrained_weights
from latteclip.errors import LatteclipError
from latteclip.methods.base import TrainContext
from latteclip.methods.pretrain import ContrastivePretraining, PretrainOptions
from latteclip.models import load_clip

TINY = {
    "method": "pretrain",
    "dataset": "fmnist",
    "root": "bundled",
    "limit": 48,
    "epochs": 1,
    "batch_size": 16,
    "warmup_steps": 1,
    "checkpoint_every": 1,
    "workers": 0,
}


def test_captions_name_the_true_class_and_replay_per_step(tmp_path):
    info = build_dataset("fmnist", "bundled", "test").info
    method = ContrastivePretraining(load_clip("latte-fmnist", "random"), info, PretrainOptions(), torch.device("cpu"))
    method.setup_training(TrainContext(build_dataset("fmnist", "bundled", "train"), None, tmp_path, seed=3))
    labels = torch.tensor([0, 9, 1, 1])
    captions = method.captions(labels, step=5)
    for caption, label in zip(captions, labels.tolist()):
        assert caption in {t.format(info.classnames[label]) for t in info.templates}
    assert method.captions(labels, step=5) == captions
    used = {method.captions(torch.tensor([9]), step)[0] for step in range(30)}
    assert len(used) > 3  # templates vary across steps


def test_attribute_captions_use_only_the_words_of_the_true_class(tmp_path):
    info = build_dataset("fmnist", "bundled", "test").info
    vocab, _ = read_vocabulary(None, "fmnist")
    method = ContrastivePretraining(
        load_clip("latte-fmnist", "random"), info, PretrainOptions(attribute_captions=0.5), torch.device("cpu")
    )
    method.setup_training(TrainContext(build_dataset("fmnist", "bundled", "train"), None, tmp_path, seed=3))
    labels = torch.tensor([1] * 40 + [8] * 40)
    captions = method.captions(labels, step=2)
    templates = {label: {t.format(info.classnames[label]) for t in info.templates} for label in (1, 8)}
    sentences = [(c, label) for c, label in zip(captions, labels.tolist()) if c not in templates[label]]
    assert 20 <= len(sentences) <= 60  # about half the captions are attribute sentences
    for caption, label in sentences:
        words = info.class_attributes[info.classnames[label]]
        noun = next(n for n in words["object"] if caption.startswith(f"{n} with "))
        rest = caption[len(noun) + len(" with ") : -1]
        shape, look = rest.split(" and ", 1)
        assert shape in words["shape"] and look in words["look"]
    # the project's class words are words of the describer's vocabulary, slot by slot
    for words in info.class_attributes.values():
        for slot, phrases in words.items():
            assert set(phrases) <= set(vocab["slots"][slot]["phrases"])
    assert method.captions(labels, step=2) == captions
    with pytest.raises(LatteclipError, match="between 0 and 1"):
        ContrastivePretraining(method.loaded, info, PretrainOptions(attribute_captions=1.5), torch.device("cpu"))
    eurosat = dataclasses.replace(info, name="eurosat", class_attributes={})
    with pytest.raises(LatteclipError, match="has none for t-shirt or top"):
        ContrastivePretraining(method.loaded, eurosat, PretrainOptions(attribute_captions=0.5), torch.device("cpu"))


def test_cache_key_follows_what_decides_the_weights():
    config = resolve_config(dict(TINY))
    assert config.model == "latte-fmnist" and config.dataset == "fmnist" and config.pretrained == "random"
    key = pretrain_key(config)
    assert pretrain_key(dataclasses.replace(config, workers=3, output="elsewhere")) == key
    assert pretrain_key(dataclasses.replace(config, lr=config.lr / 2)) != key
    assert pretrain_key(dataclasses.replace(config, limit=32)) != key
    assert pretrain_key(dataclasses.replace(config, augment_policy="randaugment")) != key
    assert pretrain_key(dataclasses.replace(config, method_options={"attribute_captions": 0.25})) != key
    with pytest.raises(LatteclipError, match="method 'pretrain'"):
        pretrained_weights(dataclasses.replace(config, method="flyp_pl"))


def test_pretrain_command_caches_and_weights_load(tmp_path, capsys, monkeypatch):
    args = ["pretrain", "--limit", "48", "--epochs", "1", "--batch-size", "16", "--warmup-steps", "1", "--workers", "0"]
    out = tmp_path / "tiny.safetensors"
    assert main([*args, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "trained in" in first and out.is_file()
    monkeypatch.setattr(pretraining, "run_training", lambda config: pytest.fail("the second call must not train"))
    assert main(args) == 0
    assert "reused from the cache" in capsys.readouterr().out
    cached = pretrained_weights(resolve_config(dict(TINY, checkpoint_every=100)))
    assert cached.cached and not (Path(cached.summary["run_dir"]) / "last.pt").exists()
    loaded = load_clip("latte-fmnist", str(out))
    saved = load_file(str(out))
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in saved.items())
    assert (
        main(
            [
                "zeroshot",
                "--dataset",
                "fmnist-rotation",
                "--root",
                "bundled",
                "--model",
                "latte-fmnist",
                "--pretrained",
                str(out),
                "--limit",
                "40",
                "--workers",
                "0",
                "--output",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    assert "zeroshot on fmnist-rotation: top-1" in capsys.readouterr().out


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    config = resolve_config(dict(TINY))
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "straight"))
    straight = load_file(str(pretrained_weights(config).path))

    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "interrupted"))
    original = ContrastivePretraining.training_step

    def stop_at_step_two(self, batch, step):
        if step == 2:
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(ContrastivePretraining, "training_step", stop_at_step_two)
    with pytest.raises(KeyboardInterrupt):
        pretrained_weights(config)
    monkeypatch.setattr(ContrastivePretraining, "training_step", original)
    resumed = pretrained_weights(config)
    assert not resumed.cached and resumed.summary["steps"] == 3
    weights = load_file(str(resumed.path))
    assert weights.keys() == straight.keys()
    assert all(torch.allclose(weights[k], straight[k], atol=1e-6) for k in straight)


def test_augment_policy_is_a_generic_torchvision_policy_or_refused():
    from torchvision import transforms as T

    from latteclip.data.transforms import train_transform

    steps = [type(t) for t in train_transform(28, augment=True, policy="trivial-augment-wide").transforms]
    assert T.TrivialAugmentWide in steps and T.ColorJitter not in steps and T.RandomResizedCrop in steps
    assert T.RandAugment in [type(t) for t in train_transform(28, policy="randaugment").transforms]
    with pytest.raises(
        LatteclipError,
        match="--augment-policy must be one of clip, trivial-augment-wide, randaugment, not 'autoaugment'",
    ):
        resolve_config({**TINY, "augment_policy": "autoaugment"})
