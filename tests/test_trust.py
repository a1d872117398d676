"""Trust: no file the project reads runs code, no run or output is replaced unasked, bad values stop up front.

One table holds every refusal: each case must end with exit code 2 and one line on stderr (no
traceback), leave every file that existed before unchanged, and never run the code planted in a
poisoned checkpoint, weights file or cache entry (it would create a marker file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from latteclip.cli import main
from latteclip.data import DatasetOptions, build_dataset
from latteclip.engine.checkpoint import load_checkpoint
from latteclip.paths import atomic_write_bytes, temp_name
from tests.conftest import TINY, TINY_FLYP, describe_argv, flags, tiny_argv
from tests.lmm_server import FakeLMMServer

# the arguments of the shared flyp runs (conftest.tiny_runs), so that --resume would accept the interrupted one
FLYP = ["train", *flags(method="flyp_pl", name="flyp", **TINY_FLYP, dataset="eurosat", limit=40), *TINY]


class Plant:
    """Unpickled, this calls open(marker, "w"): the marker file appears when a loader runs pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def poison(path: Path, payload: dict, marker: Path) -> Path:
    """A torch.save pickle of a real payload with the planted call beside it."""
    torch.save({**payload, "note": Plant(marker)}, path)
    return path


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass
class Case:
    """What one case of the table sees: private copies of a finished and an interrupted run, their data, a marker
    path."""

    tmp: Path
    run: Path  # tmp/runs/flyp: a finished flyp_pl run (final.pt, results.json)
    interrupted: Path  # tmp/runs/interrupted: the same run stopped at step 5 (last.pt, no final.pt)
    root: Path  # the EuroSAT zip the run was trained on
    folder: Path  # the small extracted EuroSAT copy (for describe)
    stack: contextlib.ExitStack
    marker: Path = field(init=False)

    def __post_init__(self):
        self.marker = self.tmp / "MARKER"

    @property
    def output(self) -> list[str]:
        return ["--output", str(self.run.parent), "--root", str(self.root)]

    def poisoned(self, path: Path) -> str:
        return str(poison(path, load_checkpoint(path), self.marker))

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def server(self, **options) -> str:
        return self.stack.enter_context(FakeLMMServer(**options)).url

    def describe(self, url: str, *extra: str) -> list[str]:
        openai = {"lmm": "openai", "lmm_url": url, "kinds": "image"}
        return describe_argv(self.folder, *TINY, *extra, **openai, store=self.tmp / "d.sqlite")


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"  # nothing listens once the socket closes


def resume_poisoned_last(c: Case) -> list[str]:
    """--resume of the interrupted run, its last.pt replaced by a pickle planting code."""
    c.poisoned(c.interrupted / "last.pt")
    return [*FLYP, *c.output, "--name", "interrupted", "--resume", "--checkpoint-every", "4"]


def weights_file(c: Case) -> str:
    state = load_checkpoint(c.run / "final.pt")["model"]
    return str(poison(c.tmp / "weights.pt", state, c.marker))


def describe_import(c: Case, line: dict | bytes) -> list[str]:
    """`describe --import` of a file holding `line` into the case's description store."""
    data = line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode()
    imported = c.write("import.jsonl", data)
    return describe_argv(c.folder, "--import", str(imported), store=c.tmp / "d.sqlite")


IMPORTED = {"kind": "image", "text": "a forest", "prompt": "p", "model": "m"}

# id -> (build the arguments, words the one line must hold)
CASES: dict[str, tuple[Callable[[Case], list[str]], str]] = {
    # 1. no code execution
    "eval-poisoned-final": (
        lambda c: ["eval", "--checkpoint", c.poisoned(c.run / "final.pt"), "--device", "cpu"],
        "could run code",
    ),
    "predict-poisoned-final": (
        lambda c: ["predict", "--checkpoint", c.poisoned(c.run / "final.pt"), str(c.folder / "2750" / "Forest")],
        "could run code",
    ),
    "export-poisoned-final": (
        lambda c: ["export", "--checkpoint", c.poisoned(c.run / "final.pt"), "--out", str(c.tmp / "exported")],
        "could run code",
    ),
    # an earlier version's pickle last.pt is never opened: the run is refused before anything loads
    "resume-poisoned-last": (
        resume_poisoned_last,
        "--overwrite instead of --resume",
    ),
    "pretrained-poisoned-weights": (
        lambda c: [*FLYP, *c.output, "--name", "other", "--pretrained", weights_file(c)],
        "could run code",
    ),
    # 2. no silent data loss
    "train-over-finished-run": (lambda c: [*FLYP, *c.output], "already holds a finished run"),
    "resume-finished-run": (lambda c: [*FLYP, *c.output, "--resume"], "already finished"),
    "train-over-interrupted-run": (
        lambda c: [*FLYP, *c.output, "--name", "interrupted"],
        "pass --resume to continue it",
    ),
    "overwrite-with-bad-value": (
        lambda c: [*FLYP, *c.output, "--overwrite", "--batch-size", "0"],
        "--batch-size must be at least 1",
    ),
    "resume-without-run": (lambda c: [*FLYP, *c.output, "--name", "new", "--resume"], "holds no run to continue"),
    "export-into-nonempty-folder": (
        lambda c: [
            "export",
            "--checkpoint",
            str(c.run / "final.pt"),
            "--out",
            str(c.write("exported/mine.txt", "keep").parent),
        ],
        "--overwrite",
    ),
    "eval-out-under-a-file": (
        lambda c: ["eval", "--checkpoint", str(c.run / "final.pt"), "--out", str(c.write("f", "x") / "e.json")],
        "is a file",
    ),
    "eval-out-exists": (
        lambda c: ["eval", "--checkpoint", str(c.run / "final.pt"), "--out", str(c.write("e.json", "{}"))],
        "exists; pass --overwrite",
    ),
    "predict-out-exists": (
        lambda c: [
            "predict",
            "--checkpoint",
            str(c.run / "final.pt"),
            str(c.folder),
            "--out",
            str(c.write("p.csv", "keep")),
        ],
        "exists; pass --overwrite",
    ),
    "lmm-zeroshot-over-finished-run": (
        lambda c: [
            "zeroshot",
            "--dataset",
            "eurosat",
            "--root",
            str(c.folder),
            "--lmm",
            "openai",
            "--lmm-url",
            dead_url(),
            "--output",
            str(c.run.parent),
            "--name",
            "flyp",
            *TINY,
        ],
        "already holds a finished run",
    ),
    "output-under-a-file": (
        lambda c: [*FLYP, "--output", str(c.write("g", "x") / "runs"), "--root", str(c.root)],
        "is a file",
    ),
    # 3. values checked before any work
    "yaml-batch-size-word": (
        lambda c: [*FLYP, *c.output, "--name", "y", "--config", str(c.write("c.yaml", 'batch_size: "eight"\n'))],
        "batch_size must be an integer, not 'eight'",
    ),
    "batch-size-0": (
        lambda c: [*FLYP, *c.output, "--name", "n", "--batch-size", "0"],
        "--batch-size must be at least 1",
    ),
    "lr-negative": (lambda c: [*FLYP, *c.output, "--name", "n", "--lr", "-1"], "--lr must be greater than 0"),
    "workers-negative": (
        lambda c: [*FLYP, *c.output, "--name", "n", "--workers", "-1"],
        "--workers must be at least 0",
    ),
    "max-steps-0": (lambda c: [*FLYP, *c.output, "--name", "n", "--max-steps", "0"], "--max-steps must be at least 1"),
    "epochs-0": (lambda c: [*FLYP, *c.output, "--name", "n", "--epochs", "0"], "--epochs must be at least 1"),
    "eval-batch-size-0": (
        lambda c: ["eval", "--checkpoint", str(c.run / "final.pt"), "--batch-size", "0"],
        "--batch-size must be",
    ),
    "predict-reads-nothing": (
        lambda c: ["predict", "--checkpoint", str(c.run / "final.pt"), str(c.write("bad/x.jpg", "no image"))],
        "none of the 1 files could be read",
    ),
    "import-not-utf8": (
        lambda c: describe_import(c, b'{"text": "caf\xe9"}\n'),
        "is not UTF-8",
    ),
    "import-outside-root": (
        lambda c: describe_import(c, {**IMPORTED, "image": "../../../../etc/passwd"}),
        "is not inside the dataset root",
    ),
    # 4. the LMM server is checked before any image is sent
    "lmm-unreachable": (lambda c: c.describe(dead_url()), "no LMM server answered"),
    "lmm-key-rejected": (lambda c: c.describe(c.server(api_key="sk-right")), "rejected the API key"),
    "lmm-model-not-served": (
        lambda c: c.describe(c.server(model="served-one", pinned=True), "--lmm-model", "llava"),
        "does not serve model 'llava'; it serves served-one",
    ),
    "lmm-lists-no-model": (lambda c: c.describe(c.server(listed=[])), "serves no model"),
}


@pytest.fixture()
def case(tiny_runs, eurosat_zip, eurosat_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("LATTECLIP_LMM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for name in ("flyp", "interrupted"):
        shutil.copytree(tiny_runs[name], tmp_path / "runs" / name)
    runs = tmp_path / "runs"
    with contextlib.ExitStack() as stack:
        yield Case(tmp_path, runs / "flyp", runs / "interrupted", eurosat_zip, eurosat_folder, stack)


@pytest.mark.parametrize("name", list(CASES))
def test_refused_with_one_line_and_nothing_changed(name, case, capsys):
    build, words = CASES[name]
    argv = build(case)
    before = checksums(case.tmp)
    code = main(argv)
    err = capsys.readouterr().err
    # what a terminal shows: a progress bar that cleared itself (text, then \r) is not a line
    lines = [shown for line in err.split("\n") if (shown := line.split("\r")[-1]).strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert "Traceback" not in err
    assert not case.marker.exists(), "the planted code ran"
    after = checksums(case.tmp)
    assert {path: after.get(path) for path in before} == before


def test_the_planted_payload_does_run_when_unpickled_unsafely(tmp_path):
    """The table's poisoned files are real attacks: torch.load(weights_only=False) creates the marker."""
    marker = tmp_path / "MARKER"
    path = poison(tmp_path / "final.pt", {"step": 1}, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoints_hold_no_pickle_and_resume_state_round_trips(tiny_runs):
    """final.pt and last.pt are safetensors files; tuples, int-keyed optimizer state and numpy RNG state come back as
    saved."""
    import numpy as np

    last = load_checkpoint(tiny_runs["interrupted"] / "last.pt")
    assert (tiny_runs["interrupted"] / "last.pt").read_bytes()[:2] != b"PK"  # not torch.save's zip of pickles
    assert set(last["optimizer"]["state"]) and all(isinstance(k, int) for k in last["optimizer"]["state"])
    assert isinstance(last["optimizer"]["param_groups"][0]["betas"], tuple)
    kind, keys, *_ = last["rng"]["numpy"]
    assert kind == "MT19937" and isinstance(keys, np.ndarray) and keys.dtype == np.uint32 and keys.shape == (624,)
    _version, state, _gauss = last["rng"]["python"]
    assert isinstance(state, tuple) and len(state) == 625
    assert last["rng"]["torch"].dtype == torch.uint8


def test_an_old_pickle_checkpoint_still_evaluates(tiny_runs, tmp_path, capsys):
    """A final.pt written by torch.save (earlier versions) holds only tensors and plain values: it loads with
    weights_only."""
    old = tmp_path / "old" / "final.pt"
    old.parent.mkdir()
    torch.save(load_checkpoint(tiny_runs["flyp"] / "final.pt"), old)
    assert (
        main(
            ["eval", "--checkpoint", str(old), "--device", "cpu", "--out", str(tmp_path / "new" / "dir" / "eval.json")]
        )
        == 0
    )
    expected = json.loads((tiny_runs["flyp"] / "results.json").read_text())["top1"]
    assert json.loads((tmp_path / "new" / "dir" / "eval.json").read_text())["top1"] == expected


def test_a_poisoned_feature_cache_entry_is_recomputed_not_run(eurosat_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "cache"))
    common = tiny_argv("zeroshot", root=eurosat_zip, limit=20, output=tmp_path / "runs")
    assert main([*common, "--name", "first"]) == 0
    entries = sorted((tmp_path / "cache" / "features").glob("*.safetensors"))
    assert entries
    marker = tmp_path / "MARKER"
    for entry in entries:
        poison(entry, {"features": torch.zeros(1)}, marker)
    with pytest.warns(UserWarning, match="ignoring unreadable feature cache"):
        assert main([*common, "--name", "second"]) == 0
    assert not marker.exists()
    first, second = (json.loads((tmp_path / "runs" / n / "results.json").read_text()) for n in ("first", "second"))
    assert first["test"] == second["test"]
    assert all(entry.read_bytes()[:2] != b"PK" for entry in entries)  # rewritten as safetensors


def test_overwrite_replaces_a_finished_run(eurosat_zip, tmp_path):
    common = tiny_argv("zeroshot", root=eurosat_zip, limit=20, output=tmp_path)
    assert main(common) == 0
    run = tmp_path / "zeroshot-eurosat-s0"
    stale = temp_name(run / "last.pt", 99999)
    stale.write_bytes(b"left by a killed write")
    (run / "results.json").write_text('{"old": true}')
    assert main([*common, "--overwrite"]) == 0
    assert "top1" in json.loads((run / "results.json").read_text()) and not stale.exists()


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "final.pt"
    target.mkdir()
    (target / "inside").write_text("x")  # os.replace cannot put a file over a non-empty folder
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.pt"]


def test_yaml_numbers_written_as_strings_are_read_as_numbers(tmp_path):
    from latteclip.config import resolve_config

    config_file = tmp_path / "c.yaml"
    config_file.write_text("lr: 1e-5\nbatch_size: '8'\nbetas: [0.9, '0.95']\naugment: 'false'\n")
    config = resolve_config({"method": "flyp_pl", "root": "x"}, str(config_file))
    assert config.lr == 1e-5 and isinstance(config.lr, float) and config.batch_size == 8
    assert config.betas == (0.9, 0.95) and config.augment is False


def test_csv_with_byte_order_mark_and_image_class_header(eurosat_folder, tmp_path):
    """Read as a header, not as an image named '\ufeffimage' of a class 'class' (which stopped with 'missing
    images')."""
    images = [p for key in ("Forest", "River") for p in sorted((eurosat_folder / "2750" / key).glob("*.jpg"))]
    rows = "".join(f"{p},{p.parent.name}\n" for p in images)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_bytes("\ufeffimage,class\n".encode("utf-8") + rows.encode())
    data = build_dataset("csv", str(csv_file), "train", None, DatasetOptions())
    assert data.info.class_keys == ["Forest", "River"]
    assert {s.path for s in data.samples} <= {str(p) for p in images} and data.samples


def test_a_damaged_zip_member_is_an_unreadable_image(eurosat_zip, tmp_path):
    from latteclip.data.transforms import eval_transform
    from latteclip.engine.features import extract_features

    names = []
    with (
        zipfile.ZipFile(eurosat_zip) as source,
        zipfile.ZipFile(tmp_path / "EuroSAT.zip", "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for name in [n for n in source.namelist() if n.endswith(".jpg")][::2700][:10]:
            target.writestr(name, source.read(name))
            names.append(name)
    archive = bytearray((tmp_path / "EuroSAT.zip").read_bytes())
    with zipfile.ZipFile(tmp_path / "EuroSAT.zip") as reader:
        info = reader.getinfo(names[3])
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    archive[start + info.compress_size // 2 : start + info.compress_size // 2 + 64] = bytes(
        64
    )  # zero part of the deflated data
    (tmp_path / "EuroSAT.zip").write_bytes(bytes(archive))
    data = build_dataset(
        "eurosat", str(tmp_path / "EuroSAT.zip"), "train", eval_transform(32), DatasetOptions(split_file="none")
    )
    _features, valid = extract_features(lambda x: x.flatten(1)[:, :4], data, torch.device("cpu"), batch_size=4)
    damaged = [s.path for s, ok in zip(data.samples, valid.tolist()) if not ok]
    assert damaged == [names[3].split("/", 1)[1]] or damaged == [names[3]]


def test_lmm_answers_keep_finish_reason_and_empty_answers_are_asked_twice(eurosat_folder, tmp_path):
    from latteclip.describe.jobs import image_hashes, image_jobs
    from latteclip.describe.openai_http import OpenAIDescriber
    from latteclip.describe.runner import Runner
    from latteclip.describe.store import DescriptionStore

    train = build_dataset("eurosat", eurosat_folder, "train")
    jobs = image_jobs(train, image_hashes(train, progress=False), lambda i: "describe")[:4]
    with FakeLMMServer(finish_reason="length") as server:
        store = DescriptionStore(tmp_path / "cut.sqlite")
        assert (
            Runner(OpenAIDescriber([server.url], backoff=0.01), store, "eurosat", 2, progress=False).run(jobs).complete
        )
        assert [row["meta"]["finish_reason"] for row in store.rows()] == ["length"] * 4
    with FakeLMMServer(faults=lambda h, a: "empty") as server:
        store = DescriptionStore(tmp_path / "empty.sqlite")
        summary = Runner(OpenAIDescriber([server.url], backoff=0.01), store, "eurosat", 2, progress=False).run(jobs)
        assert not summary.complete and set(server.requests_per_key().values()) == {2}


def test_a_model_the_server_refuses_stops_the_run_at_once(eurosat_folder, tmp_path):
    """No /models route to check first: the first HTTP 400 'model does not exist' stops the run."""
    from latteclip.describe.jobs import image_hashes, image_jobs
    from latteclip.describe.openai_http import OpenAIDescriber
    from latteclip.describe.runner import Runner
    from latteclip.describe.store import DescriptionStore

    train = build_dataset("eurosat", eurosat_folder, "train")
    jobs = image_jobs(train, image_hashes(train, progress=False), lambda i: "describe")
    with FakeLMMServer(model="served-one", pinned=True, models_route=False) as server:
        describer = OpenAIDescriber([server.url], model="llava", backoff=0.01)
        summary = Runner(describer, DescriptionStore(tmp_path / "d.sqlite"), "eurosat", 4, progress=False).run(jobs)
        assert "does not serve model 'llava'" in summary.stopped and len(server.seen) <= 4
