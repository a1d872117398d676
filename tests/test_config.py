"""The configuration layers: the published per-dataset schedule reaches every CLIP fine-tuning method,
a method's own set-up (ReCLIP's SGD) overrides it, and the user's file and flags override both."""

from __future__ import annotations

import pytest

from latteclip.config import resolve_config
from latteclip.errors import LatteclipError
from latteclip.methods import build_options, get_method


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
    options = build_options(
        get_method("latteclip"), config.method_options
    )  # one place for the defaults: the Options dataclass
    assert options.mu == 0.0 and options.alpha == 0.99
    assert (config.epochs, config.warmup_steps, config.batch_size, config.prompt_set) == (15, 40, 512, "latteclip")


def test_reclip_runs_as_its_authors_ran_it_whatever_the_dataset_file_says(tmp_path):
    config = resolve_config({"method": "reclip", "dataset": "food101"})
    assert (config.optimizer, config.lr, config.sgd_momentum, config.weight_decay) == ("sgd", 1e-3, 0.9, 1e-4)
    options = build_options(get_method("reclip"), config.method_options)
    assert (config.batch_size, config.augment, config.epochs, options.refresh_every) == (64, False, None, 0)
    user = tmp_path / "mine.yaml"
    user.write_text("epochs: 3\nlr: 5.0e-4\n")
    overridden = resolve_config({"method": "reclip", "dataset": "food101", "lr": 2e-3}, str(user))
    assert (overridden.epochs, overridden.lr) == (3, 2e-3)  # the user's file, then the command line


def test_where_an_option_counts_follows_from_its_declared_kind():
    """The sets that decide resume, the pre-training cache key and run reuse come from each field's kind,
    and equal what they were when they were three hand-kept lists (so cached weights and runs stay valid)."""
    from latteclip.config import (
        FIELDS,
        NOT_COMPARED,
        NOT_IN_WEIGHTS_KEY,
        OPTION_KINDS,
        RESUME_MAY_CHANGE,
        fields_of_kind,
    )

    # --deterministic (kind "call") came later: CPU results do not depend on it, so cached weights and runs stay
    # valid; a resume keeps it through last.pt's identity (engine.train_state.run_identity)
    assert RESUME_MAY_CHANGE == {
        "resume",
        "overwrite",
        "workers",
        "device",
        "eval_batch_size",
        "output",
        "name",
        "root",
        "store",
        "deterministic",
    }
    assert NOT_IN_WEIGHTS_KEY == {
        "output",
        "name",
        "resume",
        "overwrite",
        "workers",
        "device",
        "eval_every",
        "log_every",
        "checkpoint_every",
        "eval_batch_size",
        "store",
        "deterministic",
    }
    assert NOT_COMPARED == {"resume", "overwrite", "deterministic"}
    assert set().union(*(fields_of_kind(kind) for kind in OPTION_KINDS)) == set(FIELDS)
    assert all(f.metadata["help"] for f in FIELDS.values())


def test_a_choice_option_is_refused_before_any_work(tmp_path):
    with pytest.raises(LatteclipError, match=r"--optimizer must be one of adamw, sgd, not 'adam'"):
        resolve_config({"optimizer": "adam"})
