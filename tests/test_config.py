"""The configuration layers: the published per-dataset schedule reaches every CLIP fine-tuning method,
a method's own set-up (ReCLIP's SGD) overrides it, and the user's file and flags override both."""

from __future__ import annotations

import pytest

from latteclip.config import resolve_config


@pytest.mark.parametrize("method", ["latteclip", "flyp_pl", "oracle"])
def test_every_clip_fine_tuning_method_reads_the_published_schedule(method):
    food = resolve_config({"method": method, "dataset": "food101"})
    assert (food.lr, food.epochs, food.warmup_steps, food.max_steps, food.optimizer) == (1e-6, 15, 140, None, "adamw")
    dtd = resolve_config({"method": method, "dataset": "dtd"})
    assert (dtd.lr, dtd.epochs, dtd.warmup_steps) == (1e-7, 100, 10)
    custom = resolve_config({"method": method, "dataset": "folder"})  # no dataset file: the package defaults
    assert (custom.lr, custom.epochs, custom.warmup_steps) == (1e-7, 50, 50)


def test_latteclip_defaults_are_the_authors_rule():
    config = resolve_config({"method": "latteclip", "dataset": "eurosat"})
    assert config.method_options["mu"] == 0.0 and config.method_options["alpha"] == 0.99
    assert (config.epochs, config.warmup_steps, config.batch_size, config.prompt_set) == (15, 40, 512, "latteclip")


def test_reclip_runs_as_its_authors_ran_it_whatever_the_dataset_file_says(tmp_path):
    config = resolve_config({"method": "reclip", "dataset": "food101"})
    assert (config.optimizer, config.lr, config.sgd_momentum, config.weight_decay) == ("sgd", 1e-3, 0.9, 1e-4)
    assert (config.batch_size, config.augment, config.epochs, config.method_options["refresh_every"]) == (64, False, None, 0)
    user = tmp_path / "mine.yaml"
    user.write_text("epochs: 3\nlr: 5.0e-4\n")
    overridden = resolve_config({"method": "reclip", "dataset": "food101", "lr": 2e-3}, str(user))
    assert (overridden.epochs, overridden.lr) == (3, 2e-3)  # the user's file, then the command line
