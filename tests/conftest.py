"""Shared fixtures: the real EuroSAT data beside the checkout, tiny models, quiet logs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LATTECLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
EUROSAT_DIR = SHARED_DATA / "eurosat"
EUROSAT_ZIP = EUROSAT_DIR / "EuroSAT.zip"

# The tiny model the CLI tests run (latte-tiny with random weights, on the CPU, images loaded in the main process).
# benchmarks/refactor_check.py spells the same flags out itself: a benchmark does not import the tests.
TINY_MODEL: dict[str, object] = {"model": "latte-tiny", "pretrained": "random", "device": "cpu", "workers": 0}
# the training flags of the shared tiny flyp runs (`tiny_runs`): a test that resumes the interrupted one passes the
# same, with --checkpoint-every 4
TINY_FLYP: dict[str, object] = {
    "max_steps": 8,
    "batch_size": 16,
    "lr": "1e-3",
    "warmup_steps": 0,
    "eval_every": 4,
    "log_every": 1,
}


def flags(**values: object) -> list[str]:
    """`--max-steps 4` for `max_steps=4`, a bare `--resume` for `resume=True`, nothing for a None value."""
    argv: list[str] = []
    for key, value in values.items():
        if value is None or value is False:
            continue
        argv.append(f"--{key.replace('_', '-')}")
        if value is not True:
            argv.append(str(value))
    return argv


TINY = flags(**TINY_MODEL)


def tiny_flags(**values: object) -> list[str]:
    """40 images of the EuroSAT archive beside the checkout and the tiny model; each keyword adds a flag or replaces
    one of these (None leaves it out)."""
    return flags(**{"dataset": "eurosat", "root": EUROSAT_ZIP, "limit": 40, **TINY_MODEL, **values})


def tiny_argv(command: str, *extra: str, **values: object) -> list[str]:
    """`latteclip <command>` with `tiny_flags(**values)`, `extra` last."""
    return [command, *tiny_flags(**values), *extra]


def describe_argv(root: Path | str, *extra: str, **values: object) -> list[str]:
    """`latteclip describe` of the EuroSAT images at `root`: each keyword a flag (`flags`), `extra` last."""
    return ["describe", *flags(**{"dataset": "eurosat", "root": root, **values}), *extra]


def tiny_run_argv(method: str, output: Path | str, name: str, *extra: str, **values: object) -> list[str]:
    """`latteclip train` of `method` into `output`/`name`, as `tiny_argv` (the same keywords)."""
    return ["train", "--method", method, *tiny_flags(output=output, name=name, **values), *extra]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own cache folder, so tests never read a developer's cache."""
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    logging.getLogger().setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def eurosat_zip() -> Path:
    if not EUROSAT_ZIP.is_file():
        pytest.fail(f"EuroSAT archive not found at {EUROSAT_ZIP}: the tests need ../shared/data beside the checkout")
    return EUROSAT_ZIP


@pytest.fixture(scope="session")
def eurosat_folder(tmp_path_factory, eurosat_zip) -> Path:
    """A small extracted copy of the official layout (2750/<Class>/...) plus the split file."""
    import json
    import shutil
    import zipfile

    root = tmp_path_factory.mktemp("eurosat_extracted")
    split = json.loads((EUROSAT_DIR / "split_zhou_EuroSAT.json").read_text())
    keep: dict[str, list] = {}
    with zipfile.ZipFile(eurosat_zip) as archive:
        for part, entries in split.items():
            by_class: dict[int, int] = {}
            chosen = []
            for entry in entries:
                if by_class.get(entry[1], 0) < 6:
                    by_class[entry[1]] = by_class.get(entry[1], 0) + 1
                    chosen.append(entry)
                    target = root / "2750" / entry[0]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read("2750/" + entry[0]))
            keep[part] = chosen
    (root / "split_zhou_EuroSAT.json").write_text(json.dumps(keep))
    shutil.copystat(EUROSAT_DIR, root)
    return root


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, eurosat_zip) -> dict[str, Path]:
    """A real flyp_pl run (latte-tiny, random weights, 40 EuroSAT images, 8 steps), its zeroshot run, and the same
    flyp_pl run stopped by Ctrl-C at step 5 (`interrupted`: its last.pt is of step 4, a finished run keeps none).

    Shared by the report, predict and export tests; `--lr 1e-3` so the fine-tuned model differs from zero-shot.
    """
    from latteclip.cli import main
    from latteclip.methods.flyp import FlypPseudoLabels

    output = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATTECLIP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(tiny_run_argv("flyp_pl", output, "flyp", root=eurosat_zip, **TINY_FLYP)) == 0
        assert main(tiny_argv("zeroshot", root=eurosat_zip, output=output, name="zeroshot")) == 0
        interrupt_at_step(patch, FlypPseudoLabels, 4)
        stopped = {**TINY_FLYP, "checkpoint_every": 4}
        assert main(tiny_run_argv("flyp_pl", output, "interrupted", root=eurosat_zip, **stopped)) == 130
    return {"flyp": output / "flyp", "zeroshot": output / "zeroshot", "interrupted": output / "interrupted"}


@pytest.fixture(scope="session")
def tiny_test_images(tmp_path_factory, eurosat_zip) -> Path:
    """The 40 test images the tiny runs are evaluated on, as files in a folder per class key."""
    from latteclip.data import DatasetOptions, build_dataset

    folder = tmp_path_factory.mktemp("test_images")
    test_set = build_dataset("eurosat", eurosat_zip, "test", None, DatasetOptions(limit=40))
    for index, sample in enumerate(test_set.samples):
        target = folder / test_set.info.class_keys[sample.label] / Path(sample.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(test_set.read_bytes(index))
    return folder


def copy_scenes(eurosat_folder: Path, root: Path, per_class: int) -> Path:
    """A folder dataset of three EuroSAT classes (class key = folder), `per_class` real images each."""
    import shutil

    for key in ("Forest", "River", "SeaLake"):
        (root / key).mkdir(parents=True)
        for image in sorted((eurosat_folder / "2750" / key).iterdir())[:per_class]:
            shutil.copy(image, root / key / image.name)
    return root


def interrupt_at_step(monkeypatch, method_class: type, stop: int) -> Callable[[], None]:
    """Make `method_class.training_step` raise KeyboardInterrupt (Ctrl-C) at step `stop`; returns what undoes it."""
    original = method_class.training_step

    def interrupted(self, batch, step):
        if step == stop:
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(method_class, "training_step", interrupted)
    return lambda: monkeypatch.setattr(method_class, "training_step", original)
