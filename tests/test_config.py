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


# the authors' runs, as issue 25 lists them: total steps of LatteCLIP / FLYP / the oracle per dataset
AUTHORS_TOTAL_STEPS = {
    "dtd": 900,
    "oxford_pets": 900,
    "stanford_cars": 900,
    "ucf101": 1050,
    "fgvc_aircraft": 750,
    "caltech101": 600,
    "oxford_flowers": 600,
    "eurosat": 585,
    "sun397": 585,
    "food101": 2115,
}


@pytest.mark.parametrize("method", ["latteclip", "flyp_pl", "oracle"])
def test_clip_fine_tuning_runs_the_authors_steps_per_dataset(method):
    from latteclip.engine.schedule import Schedule

    for dataset, total in AUTHORS_TOTAL_STEPS.items():
        config = resolve_config({"method": method, "dataset": dataset})
        assert (config.lr_schedule, config.epoch_length) == ("cosine", "authors")
        schedule = Schedule.for_run(config, 100_000, config.epochs)  # the data size does not matter
        assert schedule.total_steps == total, dataset
    eurosat = resolve_config({"method": method, "dataset": "eurosat"})
    n = 18900  # CoOp's EuroSAT train + val
    assert Schedule.for_run(eurosat, n, 15).record() == {
        "total_steps": 585,
        "warmup_steps": 40,
        "steps_per_epoch": 39,
        "epochs": 15,
    }
    per_pass = resolve_config({"method": method, "dataset": "eurosat", "epoch_length": "batches"})
    assert Schedule.for_run(per_pass, n, 15).total_steps == 15 * (n // 512) == 540
    # the user's --epochs and --max-steps still count and cap
    two_epochs = resolve_config({"method": method, "dataset": "eurosat", "epochs": 2})
    assert Schedule.for_run(two_epochs, n, 2).total_steps == 78
    capped = resolve_config({"method": method, "dataset": "eurosat", "max_steps": 100})
    assert Schedule.for_run(capped, n, 15).total_steps == 100
    # a --limit subset is not the split the authors' counts describe: passes in full batches, 1890 // 512 = 3 each
    subset = resolve_config({"method": method, "dataset": "eurosat", "limit": 1890})
    assert Schedule.for_run(subset, 1890, 15).record() == {
        "total_steps": 45,
        "warmup_steps": 4,
        "steps_per_epoch": 3,
        "epochs": 15,
    }


def test_an_epoch_longer_than_a_pass_draws_from_one_seeded_pass_after_the_other():
    from latteclip.engine.schedule import Schedule, epoch_batches

    schedule = Schedule.plan(10, 4, 0, 2, None, 0, steps_per_epoch=3)  # 2 full batches per pass, 3 steps per epoch
    assert (schedule.total_steps, schedule.batches_per_pass) == (6, 2)
    passes = [epoch_batches(10, 4, 0, p) for p in range(3)]
    want = [[(p, i) for i in passes[p][b]] for p in range(3) for b in range(2)]
    assert list(schedule.batches_from(0)) == want
    assert list(schedule.batches_from(3)) == want[3:]  # a resumed run draws the same batches
    one_pass = Schedule.plan(10, 4, 0, 3, None, 0)
    assert list(one_pass.batches_from(0)) == want  # the same stream when an epoch is one pass


def test_constant_learning_rate_has_no_warm_up_and_no_decay():
    from latteclip.engine.schedule import Schedule

    constant = Schedule.plan(1000, 10, 0, 2, None, 50, lr_schedule="constant")
    assert constant.warmup_steps == 0 and [constant.lr_scale(s) for s in (0, 100, 199)] == [1.0, 1.0, 1.0]
    cosine = Schedule.plan(1000, 10, 0, 2, None, 50)
    assert cosine.warmup_steps == 20 and cosine.lr_scale(0) == pytest.approx(0.05) and cosine.lr_scale(199) < 0.01
    reclip = resolve_config({"method": "reclip", "dataset": "eurosat"})
    assert (reclip.lr_schedule, reclip.epoch_length) == ("constant", "batches")
    assert Schedule.for_run(reclip, 18900, 5).record() == {
        "total_steps": 5 * (18900 // 64),
        "warmup_steps": 0,
        "steps_per_epoch": 18900 // 64,
        "epochs": 5,
    }
    with pytest.raises(LatteclipError, match=r"--lr-schedule must be one of cosine, constant, not 'linear'"):
        resolve_config({"lr_schedule": "linear"})
