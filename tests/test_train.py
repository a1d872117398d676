"""End-to-end runs of the engine on EuroSAT with the tiny model: train, kill, resume, eval, zero-shot, config."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import latteclip
from latteclip.cli import main
from latteclip.data import DatasetOptions, build_dataset
from latteclip.engine.checkpoint import load_checkpoint
from latteclip.engine.schedule import cosine_with_warmup
from tests.conftest import copy_scenes, tiny_argv, tiny_run_argv

TOTAL_STEPS = 24
LR = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from threads, and on a shared 2-core machine they only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def flyp_args(root: Path, output: Path, name: str, *extra: str) -> list[str]:
    """40 images per split, batches of 4: 10 steps an epoch, 24 steps, the warm-up capped at 2 steps."""
    schedule = {"batch_size": 4, "lr": LR, "max_steps": TOTAL_STEPS, "eval_every": 8, "checkpoint_every": 3}
    return tiny_run_argv("flyp_pl", output, name, *extra, root=root, **schedule, log_every=1)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "final.pt")["model"]


def assert_same_run(left: Path, right: Path) -> None:
    """Same test accuracy, same per-step records (losses, learning rates, evaluations), same final weights."""
    a, b = (json.loads((d / "results.json").read_text()) for d in (left, right))
    assert a["top1"] == b["top1"] and a["test"] == b["test"] and a["steps"] == b["steps"] == TOTAL_STEPS
    assert (left / "metrics.jsonl").read_text() == (right / "metrics.jsonl").read_text()
    wa, wb = final_weights(left), final_weights(right)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def full_run(eurosat_zip, tmp_path_factory) -> Path:
    """The uninterrupted reference run: flyp_pl on the EuroSAT archive, seed 0."""
    output = tmp_path_factory.mktemp("runs")
    assert main(flyp_args(eurosat_zip, output, "full")) == 0
    return output / "full"


@pytest.fixture(scope="module")
def unfinished_run(full_run, eurosat_zip) -> Path:
    """The reference run killed while finishing: its last step checkpointed and its final evaluation logged, but
    neither final.pt nor results.json written (Ctrl-C in `Trainer.finish`)."""
    from latteclip.engine.trainer import Trainer

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "finish", killed)
        assert main(flyp_args(eurosat_zip, full_run.parent, "unfinished")) == 130
    return full_run.parent / "unfinished"


def test_flyp_pl_runs_to_the_end(full_run):
    results = json.loads((full_run / "results.json").read_text())
    assert results["method"] == "flyp_pl" and results["steps"] == TOTAL_STEPS and results["test"]["n"] == 40
    assert results["schedule"] == {
        "total_steps": TOTAL_STEPS,
        "warmup_steps": 2,
        "steps_per_epoch": 10,
        "epochs": 15,
    }  # EuroSAT: 15 epochs
    assert results["unreadable_train_images"] == 0 and results["unreadable_test_images"] == 0
    records = read_metrics(full_run)
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == list(range(1, TOTAL_STEPS + 1))
    evaluations = [(r["step"], r["eval/top1"]) for r in records if "eval/top1" in r]
    assert [s for s, _ in evaluations] == [0, 8, 16, 24]
    assert evaluations[-1][1] == results["top1"]  # the reported result is the last step's accuracy
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    # the pseudo-labels come from the model, so they are not the true labels
    assert min(r["analysis/pseudo_label_acc"] for r in records if "loss" in r) < 1.0
    config = yaml.safe_load((full_run / "config.yaml").read_text())
    assert config["method"] == "flyp_pl" and config["max_steps"] == TOTAL_STEPS and config["limit"] == 40
    kept = {p.name for p in full_run.iterdir()}
    assert {"final.pt", "results.json", "metrics.jsonl", "config.yaml"} <= kept
    assert "last.pt" not in kept  # only --resume reads it, and a finished run is not resumed


def test_learning_rate_follows_warmup_then_cosine(full_run):
    """The warm-up (50 by default) is capped at a tenth of the 24 steps, then cosine decay."""
    lrs = {r["step"]: r["lr"] for r in read_metrics(full_run) if "lr" in r}
    assert lrs[1] == pytest.approx(LR / 2) and lrs[2] == pytest.approx(LR)
    assert lrs[3] == pytest.approx(LR)  # step index 2: the first cosine step, at progress 0
    assert lrs[14] == pytest.approx(LR * 0.5)  # step index 13: 11 of the 22 decay steps done
    for record_step, lr in lrs.items():
        assert lr == pytest.approx(LR * cosine_with_warmup(record_step - 1, TOTAL_STEPS, 2))


def test_schedule_values_at_known_steps():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(4, 100, 10) == pytest.approx(0.5)
    assert cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)  # halfway through the 90 decay steps
    assert cosine_with_warmup(40, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))  # 30/90 = 1/3
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0)
    assert cosine_with_warmup(0, 10, 0) == pytest.approx(1.0)
    assert cosine_with_warmup(5, 10, 0) == pytest.approx(0.5)


def test_checkpointed_rng_states_replay_the_same_draws():
    import random

    import numpy as np

    from latteclip.engine.train_state import restore_rng_states, rng_states

    saved = rng_states(torch.device("cpu"))
    first = (torch.rand(3), random.random(), np.random.rand(2))
    restore_rng_states(saved)
    second = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(first[0], second[0]) and first[1] == second[1] and (first[2] == second[2]).all()


def test_evaluation_leaves_the_global_rng_alone(eurosat_zip):
    """Methods may draw from torch's global RNG; evaluating (or opening a loader) must not move it."""
    from latteclip.data.transforms import eval_transform
    from latteclip.engine.features import extract_features

    test = build_dataset("eurosat", eurosat_zip, "test", eval_transform(32), DatasetOptions(limit=8))
    before = torch.get_rng_state()
    features, valid = extract_features(lambda x: x.flatten(1)[:, :5], test, torch.device("cpu"), batch_size=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert features.shape == (8, 5) and bool(valid.all())


def start_run(argv: list[str]) -> subprocess.Popen:
    """`python -m latteclip ...` in a child with this test's package, cache and thread count."""
    env = dict(os.environ)
    source_root = str(Path(latteclip.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return subprocess.Popen(
        [sys.executable, "-m", "latteclip", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def kill_half_way(process: subprocess.Popen, run_dir: Path, after_step: int) -> int:
    """SIGKILL the run once it has logged `after_step` and written a checkpoint; return the checkpoint's step."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (code {process.returncode}) before it could be killed: "
                f"{process.stderr.read().decode()[-2000:]}"
            )
        metrics = run_dir / "metrics.jsonl"
        lines = metrics.read_text().split("\n")[:-1] if metrics.is_file() else []  # complete lines only
        if (run_dir / "last.pt").is_file() and any(json.loads(ln).get("step", 0) >= after_step for ln in lines):
            process.send_signal(signal.SIGKILL)
            process.wait()
            break
        time.sleep(0.02)
    else:
        process.kill()
        pytest.fail("the run made no progress")
    assert not (run_dir / "final.pt").exists()
    step = load_checkpoint(run_dir / "last.pt")["step"]
    assert 0 < step < TOTAL_STEPS
    return step


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_killed_run_resumes_to_the_same_result(full_run, eurosat_zip, workers):
    output = full_run.parent
    name = f"killed-w{workers}"
    argv = [*flyp_args(eurosat_zip, output, name), "--workers", workers]
    process = start_run(argv)
    kill_half_way(process, output / name, after_step=10)
    assert main([*argv, "--resume"]) == 0
    assert_same_run(full_run, output / name)


def test_run_killed_while_finishing_resumes_to_the_same_record(full_run, unfinished_run, eurosat_zip):
    output = full_run.parent
    shutil.copytree(unfinished_run, output / "finishing")
    assert not (output / "finishing" / "final.pt").exists()
    assert main(flyp_args(eurosat_zip, output, "finishing", "--resume")) == 0
    assert_same_run(full_run, output / "finishing")
    assert not (output / "finishing" / "last.pt").exists()


def test_resume_refuses_changed_settings(unfinished_run, eurosat_zip, capsys):
    code = main(flyp_args(eurosat_zip, unfinished_run.parent, "unfinished", "--lr", "0.5", "--resume"))
    assert code == 2 and "lr: 0.0001 -> 0.5" in capsys.readouterr().err


def test_resume_identity_holds_the_precision_in_use_and_the_device_type(
    full_run, unfinished_run, tmp_path, monkeypatch
):
    """--precision auto is fp32 on CPU and bf16 on a GPU, fp16 only on a GPU: a run resumed on the other kind of
    device would silently change precision (or load a disabled grad scaler's empty state): refused instead."""
    import dataclasses
    import warnings

    from latteclip.config import RunConfig
    from latteclip.engine.train_state import RUNTIME_KEYS, check_resumable, run_identity
    from latteclip.errors import LatteclipError

    assert load_checkpoint(unfinished_run / "last.pt")["config"]["precision_in_use"] == "fp32"
    results = json.loads((full_run / "results.json").read_text())
    assert (results["precision"], results["device_type"]) == ("fp32", "cpu")  # what reuse can compare
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an Ampere GPU
    with warnings.catch_warnings():  # autocast warns that this machine has no CUDA: only its settings are read
        warnings.simplefilter("ignore")
        for precision, on_cpu, on_gpu in (("auto", "fp32", "bf16"), ("fp16", "fp32", "fp16"), ("fp32", "fp32", "fp32")):
            config = dataclasses.replace(RunConfig(), precision=precision)
            started, resumed = run_identity(config, cpu), run_identity(config, gpu)
            assert (started["precision_in_use"], resumed["precision_in_use"]) == (on_cpu, on_gpu)
            with pytest.raises(LatteclipError, match="device_type: 'cpu' -> 'cuda'"):
                check_resumable(started, resumed, tmp_path)
    older = {k: v for k, v in started.items() if k not in RUNTIME_KEYS}  # a last.pt written before these keys
    check_resumable(older, run_identity(config, cpu), tmp_path)


def test_an_old_pickle_last_pt_says_what_to_run_instead(eurosat_zip, tmp_path, capsys):
    import numpy as np

    (tmp_path / "old").mkdir()
    torch.save({"step": 3, "rng": {"numpy": np.random.get_state()}}, tmp_path / "old" / "last.pt")
    assert main(flyp_args(eurosat_zip, tmp_path, "old", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "last.pt is a pickle" in err and "--overwrite instead of --resume" in err


def test_eval_reproduces_the_reported_accuracy(full_run):
    results = json.loads((full_run / "results.json").read_text())
    assert main(["eval", "--checkpoint", str(full_run / "final.pt"), "--device", "cpu"]) == 0
    report = json.loads((full_run / "eval.json").read_text())
    assert report["top1"] == results["top1"] and report["confusion"] == results["test"]["confusion"]


def test_eval_on_another_root_does_not_inherit_the_training_subset(full_run, eurosat_folder, tmp_path):
    """The run used --limit 40 on the archive; the extracted copy is evaluated whole, with its own split file."""
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(full_run / "final.pt"),
                "--root",
                str(eurosat_folder),
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["n"] == len(build_dataset("eurosat", eurosat_folder, "test")) == 60


def test_oracle_trains_on_the_true_labels(eurosat_zip, tmp_path):
    argv = flyp_args(eurosat_zip, tmp_path, "oracle", "--method", "oracle", "--max-steps", "6", "--eval-every", "0")
    assert main(argv) == 0
    records = [r for r in read_metrics(tmp_path / "oracle") if "loss" in r]
    assert len(records) == 6 and all(r["analysis/pseudo_label_acc"] == 1.0 for r in records)
    torch.manual_seed(0)
    from latteclip.models import load_clip

    start = load_clip("latte-tiny", "random").model.state_dict()
    trained = final_weights(tmp_path / "oracle")
    assert not torch.equal(start["text_projection"], trained["text_projection"])  # both towers move
    assert not torch.equal(start["visual.proj"], trained["visual.proj"])


def test_zeroshot_does_not_train(eurosat_zip, tmp_path):
    argv = flyp_args(eurosat_zip, tmp_path, "zs", "--method", "zeroshot")
    assert main(argv) == 0
    results = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert results["steps"] == 0 and read_metrics(tmp_path / "zs") == []
    torch.manual_seed(0)
    from latteclip.models import load_clip

    start = load_clip("latte-tiny", "random").model.state_dict()
    final = final_weights(tmp_path / "zs")
    assert all(torch.equal(start[k], final[k]) for k in start)


def test_zeroshot_report_and_feature_cache(eurosat_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "cache"))
    argv = tiny_argv("zeroshot", root=eurosat_zip, limit=50, output=tmp_path, name="zs")
    assert main(argv) == 0
    results = json.loads((tmp_path / "zs" / "results.json").read_text())
    test = results["test"]
    confusion = torch.tensor(test["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == test["n"] == 50
    assert results["top1"] == pytest.approx(confusion.trace().item() / 50)
    classnames = build_dataset("eurosat", eurosat_zip, "test").info.classnames
    assert list(test["per_class"]) == classnames
    for c, name in enumerate(classnames):
        assert test["per_class"][name] == pytest.approx(confusion[c, c].item() / confusion[c].sum().item())
    cached = list((tmp_path / "cache" / "features").glob("*.safetensors"))
    assert len(cached) == 1

    from latteclip.methods.zeroshot import ZeroShot

    def must_not_run(self, images):
        raise AssertionError("the test features should come from the cache")

    monkeypatch.setattr(ZeroShot, "encode_images", must_not_run)
    assert main([*argv, "--name", "zs-again"]) == 0
    again = json.loads((tmp_path / "zs-again" / "results.json").read_text())
    assert again["test"] == test
    assert list((tmp_path / "cache" / "features").glob("*.safetensors")) == cached


def test_config_file_with_command_line_overrides(eurosat_zip, tmp_path):
    config = tmp_path / "experiment.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "method": "flyp_pl",
                "dataset": "eurosat",
                "root": str(eurosat_zip),
                "limit": 20,
                "model": "latte-tiny",
                "pretrained": "random",
                "device": "cpu",
                "workers": 0,
                "max_steps": 6,
                "batch_size": 4,
                "lr": 0.001,
                "eval_every": 0,
                "log_every": 1,
            }
        )
    )
    assert main(["train", "--config", str(config), "--max-steps", "3", "--output", str(tmp_path), "--name", "cfg"]) == 0
    saved = yaml.safe_load((tmp_path / "cfg" / "config.yaml").read_text())
    assert saved["max_steps"] == 3  # the flag wins over the file
    assert saved["lr"] == 0.001 and saved["batch_size"] == 4 and saved["limit"] == 20  # the file wins over defaults
    assert saved["weight_decay"] == 0.2 and saved["betas"] == [0.9, 0.98]  # defaults fill the rest
    results = json.loads((tmp_path / "cfg" / "results.json").read_text())
    assert results["steps"] == 3 and results["test"]["n"] == 20


def test_unreadable_images_are_skipped_and_counted(eurosat_folder, tmp_path):
    root = copy_scenes(eurosat_folder, tmp_path / "scenes", 10)
    for key in ("Forest", "River", "SeaLake"):
        for n in range(2):
            (root / key / f"broken_{n}.jpg").write_bytes(b"\x00garbage, not a JPEG")
    broken = {
        split: sum(
            s.path.split("/")[1].startswith("broken")
            for s in build_dataset("folder", root, split, None, DatasetOptions()).samples
        )
        for split in ("train", "test")
    }
    assert broken["train"] >= 1 and broken["test"] >= 1 and sum(broken.values()) == 6
    train_size = len(build_dataset("folder", root, "train"))
    folder = {"dataset": "folder", "root": root, "limit": None}
    argv = tiny_run_argv("flyp_pl", tmp_path, "broken", **folder, batch_size=train_size // 2, max_steps=4, eval_every=0)
    with pytest.warns(UserWarning, match="broken_"):
        assert main(argv) == 0
    results = json.loads((tmp_path / "broken" / "results.json").read_text())
    assert results["unreadable_train_images"] == broken["train"]
    assert results["unreadable_test_images"] == broken["test"]
    assert results["test"]["n"] == len(build_dataset("folder", root, "test")) - broken["test"]


def test_custom_folder_with_class_names_and_domain_through_the_cli(eurosat_folder, tmp_path):
    root = tmp_path / "scenes"
    for key in ("Forest", "River"):
        shutil.copytree(eurosat_folder / "2750" / key, root / key)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"Forest": "dense forest", "River": "river"}))
    folder = {"dataset": "folder", "root": root, "limit": None, "classnames": names, "domain": "aerial scene"}
    argv = tiny_argv("zeroshot", **folder, output=tmp_path, name="custom")
    assert main(argv) == 0
    results = json.loads((tmp_path / "custom" / "results.json").read_text())
    assert list(results["test"]["per_class"]) == ["dense forest", "river"]
    info = load_checkpoint(tmp_path / "custom" / "final.pt")["info"]
    assert info["domain"] == "aerial scene" and info["class_keys"] == ["Forest", "River"]


@pytest.mark.parametrize("source", ["zero-shot", "current"])
def test_flyp_pseudo_labels_from_the_fixed_zero_shot_labels_or_the_live_model(eurosat_zip, tmp_path, source):
    from latteclip.data import DatasetOptions, build_dataset, collate
    from latteclip.data.transforms import eval_transform
    from latteclip.methods.base import TrainContext
    from latteclip.methods.flyp import FlypOptions, FlypPseudoLabels
    from latteclip.models import load_clip

    loaded = load_clip("latte-tiny", "random")
    train = build_dataset(
        "eurosat",
        eurosat_zip,
        "train",
        eval_transform(loaded.image_size, loaded.mean, loaded.std),
        DatasetOptions(limit=20),
    )
    zs = (torch.arange(len(train)) * 7) % 10  # any fixed labels: the zero-shot source must return exactly these
    method = FlypPseudoLabels(loaded, train.info, FlypOptions(pseudo_labels=source), torch.device("cpu"))
    method.setup_training(TrainContext(train, zs if method.needs_zero_shot_labels else None, tmp_path, 0))
    batch = collate([train[i] for i in range(8)])
    features = torch.nn.functional.normalize(loaded.model.encode_image(batch["image"]), dim=-1)
    live = (features @ method.classifier().t()).argmax(dim=-1)
    expected = zs[batch["index"]] if source == "zero-shot" else live
    assert torch.equal(method.labels_for(batch, features), expected)
    assert method.needs_zero_shot_labels == (source == "zero-shot")
