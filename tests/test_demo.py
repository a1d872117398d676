"""`latteclip demo --quick` end to end, the experiment file, hyper-parameter choice and the benchmark page."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from latteclip import api
from latteclip.cli import main
from latteclip.config import resolve_config
from latteclip.engine import pretraining
from latteclip.engine.results import computed_as
from latteclip.errors import LatteclipError
from latteclip.experiments import jobs, machine, runner
from latteclip.experiments.jobs import run_or_reuse
from latteclip.experiments.runner import FinishedRun
from latteclip.experiments.spec import load_experiment, package_experiment_file
from latteclip.experiments.tables import results_table

REPO = Path(__file__).resolve().parents[1]


def demo_config(tmp_path: Path, **changes) -> Path:
    """The package's demo file with top-level settings changed."""
    data = yaml.safe_load(package_experiment_file("demo").read_text())
    if "methods" in changes:
        data.pop("report")  # the package's report entry may not be among the new methods
    data.update(changes)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_then_reuses_everything(tmp_path, capsys, monkeypatch):
    output = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(output), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    entries = load_experiment(package_experiment_file("demo")).methods
    assert {"zeroshot", "describer_zeroshot", "latteclip"} <= {e.name for e in entries}
    assert "| method | blur-noise | rotation |" in printed
    for entry in entries:
        assert f"| {entry.label} |" in printed
    summary = json.loads((output / "demo.json").read_text())
    assert summary["quick"] and set(summary["cells"]) == {
        f"{e.name}|{shift}" for e in entries for shift in ("blur-noise", "rotation")
    }
    assert all(0.0 <= run["top1"] <= 1.0 for runs in summary["cells"].values() for run in runs)
    assert summary["cells"]["latteclip|rotation"][0]["steps"] == 2
    assert "analysis/pseudo_label_acc" in summary["cells"]["latteclip|rotation"][0]
    assert (output / "rotation" / "latteclip-s0" / "final.pt").is_file()
    for shift in ("blur-noise", "rotation"):  # the report of LatteCLIP (`report: latteclip`) against the others
        assert f"report: {output / shift / 'report' / 'report.html'}" in printed
        assert "latteclip on fmnist-" + shift in (output / shift / "report" / "report.html").read_text()
    # LatteCLIP trained on offline descriptions of exactly its training images, made by the demo's describe stage
    stage = yaml.safe_load((output / "describe" / "fmnist-rotation-s0.yaml").read_text())
    assert (
        stage["describe"]["lmm"] == "offline" and stage["limit"] == 100 and stage["pretrained"].endswith(".safetensors")
    )
    assert "image: 100 images, 100 described now" in printed
    # ... written by the describer, a second CLIP pre-trained on the source domain, and read by that name only
    describer = summary["describer"]
    assert stage["describe"]["describer_model"] == "latte-fmnist-describer" == describer["config"]["model"]
    assert stage["describe"]["describer_pretrained"] == describer["weights"] != stage["pretrained"]
    assert describer["config"]["seed"] == 1 and describer["config"]["augment_policy"] == "trivial-augment-wide"
    assert (
        describer["config"]["method_options"]
        == summary["pretrained"]["config"]["method_options"]
        == {"attribute_captions": 0.5}
    )
    latte = yaml.safe_load((output / "rotation" / "latteclip-s0" / "config.yaml").read_text())
    weights = Path(describer["weights"]).name
    assert latte["method_options"]["described_by"].startswith(f"clip-vocab:latte-fmnist-describer:{weights}:")
    zero_shot_of_describer = yaml.safe_load((output / "rotation" / "describer_zeroshot-s0" / "config.yaml").read_text())
    assert zero_shot_of_describer["pretrained"] == describer["weights"] and "| describer zero-shot |" in printed
    assert summary["cells"]["latteclip|rotation"][0]["steps"] == 2
    table = (output / "results.md").read_text()

    def no_training(config):
        pytest.fail("a second demo must reuse the cached pre-training and the finished runs")

    monkeypatch.setattr(pretraining, "run_training", no_training)
    monkeypatch.setattr(jobs, "run_training", no_training)
    assert main(["demo", "--quick", "--output", str(output), "--threads", "1"]) == 0
    assert "reused from the cache" in capsys.readouterr().out
    assert (output / "results.md").read_text() == table


def test_experiment_file_mistakes_are_named(tmp_path, capsys):
    with pytest.raises(LatteclipError, match="unknown setting 'shfits'"):
        load_experiment(demo_config(tmp_path, shfits=["rotation"]))
    with pytest.raises(LatteclipError, match=r"\(flyp_pl\): unknown run option\(s\) learning_rate"):
        load_experiment(demo_config(tmp_path, methods=[{"method": "flyp_pl", "learning_rate": 1e-5}]))
    with pytest.raises(LatteclipError, match="share a name"):
        load_experiment(demo_config(tmp_path, methods=[{"method": "flyp_pl"}, {"method": "flyp_pl"}]))
    with pytest.raises(LatteclipError, match="no 'fast' section"):
        load_experiment(package_experiment_file("demo"), "fast")
    path = demo_config(tmp_path, methods=[{"method": "flyp_pl", "needs": ["captions"]}])
    assert main(["demo", "--config", str(path), "--quick"]) == 2
    assert "needs stage(s) captions; the demo runs: descriptions" in capsys.readouterr().err
    path = demo_config(tmp_path, methods=[{"method": "latteclip", "needs": ["descriptions"]}], describe={})
    assert main(["demo", "--config", str(path), "--quick"]) == 2
    assert "give the describer under 'describe:'" in capsys.readouterr().err
    with pytest.raises(LatteclipError, match="'report: coft' names no method entry"):
        load_experiment(demo_config(tmp_path, methods=[{"method": "flyp_pl"}], report="coft"))
    with pytest.raises(LatteclipError, match="start from 'weights: describer' but there is no 'describer' section"):
        load_experiment(demo_config(tmp_path, describer={}, methods=[{"method": "zeroshot", "weights": "describer"}]))
    with pytest.raises(LatteclipError, match="'weights: teacher' must be one of source, describer"):
        load_experiment(demo_config(tmp_path, methods=[{"method": "zeroshot", "weights": "teacher"}]))
    benchmark = load_experiment(package_experiment_file("demo"), "benchmark")
    demo = [e.name for e in load_experiment(package_experiment_file("demo")).methods]
    assert demo == ["zeroshot", "describer_zeroshot", "latteclip"]  # a first demo in minutes
    rows = ["flyp_pl", "reclip", "coft", "coft_plus", "oracle", "latteclip_class", "latteclip_class_image"]
    assert [e.name for e in benchmark.methods] == demo + rows  # more_methods: appended rows
    quick = load_experiment(package_experiment_file("demo"), "quick")
    assert quick.run["max_steps"] == 2 and quick.run["lr"] == load_experiment(package_experiment_file("demo")).run["lr"]


def test_choice_is_made_on_held_out_training_images(tmp_path, monkeypatch):
    path = demo_config(
        tmp_path,
        methods=[{"method": "flyp_pl", "lr": 1e-5, "search": {"lr": [1e-6, 1e-5, 1e-4], "max_steps": [10, 20]}}],
        shifts=["rotation"],
    )
    experiment = load_experiment(path)
    entry = experiment.methods[0]
    heldout_top1 = {
        (1e-6, 10): 0.50,
        (1e-5, 10): 0.61,
        (1e-4, 10): 0.61,
        (1e-6, 20): 0.55,
        (1e-5, 20): 0.40,
        (1e-4, 20): 0.30,
    }
    seen = []

    def fake_run(config, prepare=None, archive=None, fresh=False, held=None):
        seen.append(config.dataset)
        return FinishedRun({"top1": heldout_top1[(config.lr, config.max_steps)]}, {})

    monkeypatch.setattr(runner, "finished_run", fake_run)
    experiment.weights["source"] = tmp_path / "weights.safetensors"
    choice, scores = runner.choose_all(experiment, lambda e: runner.RunHow(), set(), None, None, lambda m: None)[
        (entry.name, "rotation")
    ]
    assert set(seen) == {"fmnist-heldout-rotation"} and len(scores) == 6
    assert choice == {"lr": 1e-5, "max_steps": 10}  # tied with lr 1e-4: the earlier candidate wins


def test_finished_runs_are_reused_only_with_the_same_configuration(tmp_path, monkeypatch):
    values = {
        "method": "zeroshot",
        "dataset": "fmnist-tint",
        "root": "bundled",
        "model": "latte-fmnist",
        "pretrained": "random",
        "limit": 30,
        "workers": 0,
        "output": str(tmp_path),
        "name": "zs",
    }
    first = run_or_reuse(resolve_config(values))
    calls = []
    real = jobs.run_training
    monkeypatch.setattr(jobs, "run_training", lambda config: calls.append(config) or real(config))
    assert run_or_reuse(resolve_config(values)) == first and not calls
    changed = run_or_reuse(resolve_config({**values, "limit": 20}))
    assert len(calls) == 1 and changed["test"]["n"] == 20
    # the same options computed on a GPU in bf16 (--precision auto there) are not this CPU run's results: trained again
    results_file = tmp_path / "zs" / "results.json"
    on_gpu = {**json.loads(results_file.read_text()), "precision": "bf16", "device_type": "cuda"}
    results_file.write_text(json.dumps(on_gpu))
    again = run_or_reuse(resolve_config({**values, "limit": 20}))
    assert len(calls) == 2 and (again["precision"], again["device_type"]) == ("fp32", "cpu")
    assert computed_as({}, "fp32", "cpu") and not computed_as({"device_type": "cuda"}, "fp32", "cpu")


@pytest.mark.slow
def test_benchmark_slice_writes_its_section_of_the_results_page(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("domain_shift_benchmark", REPO / "benchmarks" / "domain_shift.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    config = demo_config(
        tmp_path,
        describer={},
        methods=[
            {"method": "zeroshot", "label": "CLIP zero-shot"},
            {"method": "flyp_pl", "label": "FLYP + pseudo-labels", "search": {"lr": [1e-5, 1e-4]}},
        ],
    )
    out = tmp_path / "results.md"
    argv = [
        "--config",
        str(config),
        "--variant",
        "quick",
        "--shifts",
        "tint",
        "--seeds",
        "0,1",
        "--threads",
        "1",
        "--output",
        str(tmp_path / "runs"),
        "--out",
        str(out),
        "--archive",
        str(tmp_path / "archive"),
    ]
    out.write_text("# Measured results\n\n<!-- other:start -->\n## Another benchmark\n<!-- other:end -->\n")
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "domain_shift.py"), *argv])
    assert benchmark.main(argv) == 0
    page = out.read_text()
    assert "## Another benchmark" in page and "<!-- domain_shift:start -->" in page
    assert "Command: `python benchmarks/domain_shift.py --config" in page and "Torch threads: 1." in page
    assert "| method | tint |" in page and " ± " in page  # two seeds: mean ± std
    assert '| tint | FLYP + pseudo-labels | {"lr": 1e-05}: ' in page
    assert "| tint | CLIP zero-shot | 1 |" in page
    assert "| CLIP zero-shot | predictions/top_class_share |" in page
    # a new checkout has no run folders: the archive's entries stand in for them, with nothing trained
    table = page[page.index("### Top-1") : page.index("### Hyper-parameters")]
    assert "| FLYP + pseudo-labels (label-free choice) |" in table
    choice_row = next(line for line in page.splitlines() if line.startswith("| tint | FLYP + pseudo-labels | {"))
    labelled, label_free = (cell.strip(" `") for cell in choice_row.split("|")[4:6])
    entries = [p for p in (tmp_path / "archive").rglob("*.json") if p.parent.name != "weights"]
    # 2 held-out candidates (each scored label-free) + 2 entries x 2 seeds, + 2 seeds of another label-free pick
    assert len(entries) == 6 + (2 if labelled != label_free else 0)
    held_out = json.loads(next((tmp_path / "archive" / "select").rglob("*.json")).read_text())["results"]
    assert set(held_out["label_free_scores"]) >= {"prediction_balance", "soft_neighborhood_density", "mixval"}
    assert len(list((tmp_path / "archive" / "weights").glob("*.json"))) == 1  # what the source weights compute
    monkeypatch.setattr(jobs, "run_training", lambda config: pytest.fail("an archived run must not train again"))
    shutil.rmtree(tmp_path / "runs")
    assert benchmark.main(argv) == 0
    again = out.read_text()
    assert again[again.index("### Top-1") : again.index("### Hyper-parameters")] == table
    # --rerun trains an entry anew (after a change to its code); its held-out candidates are scored again
    monkeypatch.setattr(runner, "held_out_scoring", lambda *args: runner.HeldOutScoring("d", lambda: None))
    scored = {"top1": 0.5, "steps": 2, "timings": {}, "test": {}, "label_free_scores": {"prediction_balance": 0.0}}
    monkeypatch.setattr(runner, "score_run", lambda run_dir, config, held: scored)
    monkeypatch.setattr(
        jobs,
        "run_training",
        lambda config: (
            pytest.fail(f"only flyp_pl reruns, not {config.method}")
            if config.method != "flyp_pl"
            else {"top1": 0.5, "steps": 2, "timings": {}, "test": {}}
        ),
    )
    assert benchmark.main([*argv, "--rerun", "flyp_pl"]) == 0
    assert "| FLYP + pseudo-labels | 50.00 ± 0.00 |" in out.read_text()
    assert "| FLYP + pseudo-labels (label-free choice) | 50.00 ± 0.00 |" in out.read_text()  # the same pick


def test_run_summary_averages_the_last_fifth_of_training_and_measures_the_prediction_spread(tmp_path):
    records = [{"step": i, "loss": 1.0, "analysis/pseudo_label_acc": i / 10} for i in range(1, 11)]
    records.append({"step": 10, "eval/top1": 0.5})  # an evaluation line is not a training record
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results = {"top1": 0.375, "steps": 10, "timings": {"total_s": 3.0}, "test": {"confusion": [[3, 1], [4, 0]]}}
    summary = runner.run_summary(results, tmp_path)
    assert summary["analysis/pseudo_label_acc"] == pytest.approx(0.95)  # steps 9 and 10
    assert summary["predictions/top_class_share"] == pytest.approx(7 / 8)  # 7 of 8 test images predicted as class 0


def test_idle_cores_come_from_cpu_use_measured_now(monkeypatch):
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 4)
    samples = iter([(100, 400), (250, 600)])  # 150 busy of 200 jiffies: 3 of 4 cores busy
    monkeypatch.setattr(machine, "cpu_times", lambda: next(samples))
    assert machine.idle_cores(window_s=0) == 1
    monkeypatch.setattr(machine, "cpu_times", lambda: None)  # no /proc: the load average decides
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (0.4, 0.0, 0.0))
    assert machine.idle_cores(window_s=0) == 4


def test_the_description_sweep_reads_labels_only_when_asked(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("domain_shift_benchmark", REPO / "benchmarks" / "domain_shift.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "results.md"
    assert benchmark.main(["--sweep", "--output", str(tmp_path / "runs"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TRUE labels" in err and "pass --reads-labels" in err
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert (
        benchmark.main(
            ["--sweep", "--reads-labels", "--shifts", "rotation", "--output", str(tmp_path / "runs"), "--out", str(out)]
        )
        == 2
    )
    assert "--sweep needs the shift blur-noise" in capsys.readouterr().err and not out.exists()


def test_true_class_descriptions_name_the_true_class_for_the_share_asked(tmp_path):
    from latteclip.data import build_dataset
    from latteclip.describe.jobs import image_hashes
    from latteclip.describe.store import ANALYSIS_TAG, DescriptionStore
    from latteclip.engine.describing import true_class_descriptions
    from latteclip.engine.session import dataset_options

    config = resolve_config(
        {"method": "latteclip", "dataset": "fmnist-blur-noise", "root": "bundled", "limit": 200, "seed": 0}
    )
    store = DescriptionStore(tmp_path / "sweep.sqlite")
    with pytest.raises(LatteclipError, match="read the TRUE labels"):
        true_class_descriptions(config, 0.3, store, "q0.3")
    assert not list(store.rows())
    assert true_class_descriptions(config, 0.3, store, "q0.3", reads_labels=True) == 200
    train = build_dataset("fmnist-blur-noise", "bundled", "train", None, dataset_options(config))
    hashes = image_hashes(train, progress=False)
    assert store.get_texts(hashes, "image") == [None] * 200  # analysis texts are read only by their model name
    info = train.info
    for kind in ("image", "group"):
        texts = store.get_texts(hashes, kind, model="q0.3" + ANALYSIS_TAG)
        named = [
            next(c for c, name in enumerate(info.classnames) if text.startswith(info.templates[0].format(name)))
            for text in texts
        ]
        true = sum(n == s.label for n, s in zip(named, train.samples)) / 200
        assert 0.2 < true < 0.4, true  # about 30% name the true class, the rest another class
    store.close()


def test_the_archive_reuses_a_run_only_with_the_same_configuration_and_weights(tmp_path):
    from latteclip.experiments.archive import RunArchive

    weights = tmp_path / "source.safetensors"
    weights.write_bytes(b"weights one")
    values = {
        "method": "flyp_pl",
        "dataset": "fmnist-tint",
        "root": "bundled",
        "model": "latte-fmnist",
        "pretrained": str(weights),
        "output": str(tmp_path / "runs"),
        "name": "tint/flyp_pl-s0",
    }
    archive = RunArchive(tmp_path / "archive")
    assert archive.bind({"source": weights}) == []
    config = resolve_config(values)
    archive.put(config, {"top1": 0.5}, {"top1": 0.5, "seed": 0})
    moved = resolve_config({**values, "output": str(tmp_path / "elsewhere")})  # another checkout's run folders
    assert archive.get(moved)["results"] == {"top1": 0.5}
    assert archive.get(resolve_config({**values, "lr": 1e-4})) is None  # another configuration
    weights.write_bytes(b"weights two")  # the same path, other weights (pre-trained with another thread count)
    fresh = RunArchive(tmp_path / "archive")
    warnings = fresh.bind({"source": weights})
    assert len(warnings) == 1 and "1 archived runs" in warnings[0] and "not reused" in warnings[0]
    assert fresh.get(moved) is None


def test_the_page_names_every_shift_where_a_method_loses_or_collapses(tmp_path):
    spec = importlib.util.spec_from_file_location("domain_shift_benchmark", REPO / "benchmarks" / "domain_shift.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    experiment = load_experiment(
        demo_config(
            tmp_path,
            describer={},
            shifts=["tint", "rotation"],
            methods=[
                {"method": "zeroshot", "label": "CLIP zero-shot"},
                {"method": "flyp_pl", "label": "FLYP"},
                {"method": "coft", "label": "CoFT"},
            ],
        )
    )
    share = "predictions/top_class_share"
    cells = {
        ("zeroshot", "tint"): [{"top1": 0.40, share: 0.30}],
        ("flyp_pl", "tint"): [{"top1": 0.50, share: 0.20}],
        ("coft", "tint"): [{"top1": 0.55, share: 0.37}, {"top1": 0.53, share: 0.35}],  # wins, but 36% > 30% + 5
        ("zeroshot", "rotation"): [{"top1": 0.23, share: 0.30}],
        ("flyp_pl", "rotation"): [{"top1": 0.24, share: 0.20}],
        ("coft", "rotation"): [{"top1": 0.23, share: 0.34}],
    }  # ties zero-shot, below FLYP; 34% is within 5 points
    lines = benchmark.label_free_comparisons(experiment, cells)
    assert [line.split(":")[0] for line in lines] == ["- tint", "- rotation"]  # the experiment's order of shifts
    assert lines[1].startswith(
        "- rotation: CoFT (23.00%) does not beat CLIP zero-shot (23.00%), FLYP (24.00%); measured"
    )
    table = results_table(experiment, cells).splitlines()
    assert table[0] == "| method | tint | rotation | mean of the shifted domains |"
    assert table[-1] == "| CoFT | 54.00 ± 1.41 | 23.00 | 38.50 |"  # (mean of the two tint seeds + rotation) / 2
    assert (
        lines[0]
        == "- tint: CoFT gives 36.0% of its test predictions to one class, more than 5 points above zero-shot's 30.0% "
        "(collapse onto a class)."
    )


@pytest.mark.slow
def test_a_shift_experiment_through_the_local_launcher_gives_the_in_process_results(tmp_path):
    """The paper's launcher runs the demo's kind of experiment too: held-out candidates, then every target run and the
    label-free pick, as jobs on two CPU slots at once; the same cells and choices as one after the other here."""
    from latteclip.experiments.launch import LaunchSettings

    methods = [
        {"method": "zeroshot", "label": "CLIP zero-shot"},
        {"method": "flyp_pl", "label": "FLYP + pseudo-labels", "search": {"lr": [1e-5, 1e-2]}},
    ]
    config = demo_config(tmp_path, describer={}, methods=methods, shifts=["tint"])
    measured = {}
    for how, launcher in (("here", None), ("jobs", LaunchSettings(folder=tmp_path / "jobs", devices=("cpu", "cpu")))):
        experiment = load_experiment(config, "quick", {"output": str(tmp_path / how)})
        runs = runner.run_experiment(
            experiment, True, lambda line: None, label_free_score="prediction_balance", launcher=launcher
        )
        measured[how] = (
            {key: [r["top1"] for r in cell] for key, cell in runs.cells.items()},
            {key: [r["top1"] for r in cell] for key, cell in runs.label_free.items()},
            [(c["chosen"], c["label_free_pick"], [s["heldout_top1"] for s in c["scores"]]) for c in runs.choices],
        )
    assert measured["jobs"] == measured["here"] and len(measured["here"][0]) == 2
    assert len(list((tmp_path / "jobs").rglob("*_log.out"))) >= 4  # two held-out candidates and two target runs
    # status and tables read the same run folders, training nothing
    experiment = load_experiment(config, "quick", {"output": str(tmp_path / "here"), "choose": True})
    states = dict(api.shift_status(experiment))
    assert [states[name].state for name in ("select/tint/flyp_pl/lr1e-05", "tint/flyp_pl-s0", "tint/zeroshot-s0")] == [
        "done"
    ] * 3
    assert api.shift_tables(experiment) == results_table(experiment, runs.cells)
    shutil.rmtree(tmp_path / "here" / "select" / "tint" / "flyp_pl" / "lr0.01")
    states = dict(api.shift_status(experiment))
    assert states["select/tint/flyp_pl/lr0.01"].state == "missing"
    assert (states["tint/flyp_pl-s0"].state, states["tint/flyp_pl-s0"].message) == (
        "missing",
        "waits for the held-out choice",
    )


def test_the_choice_analysis_runs_every_candidate_on_shifted_domains_only(tmp_path):
    """The label-free pick runs every seed; with `candidate_runs` the other candidates run the first seed too, on a
    shifted domain (the analysis measures those) but not on the clean one; the labelled choice is the entry's own."""
    methods = [{"method": "flyp_pl", "label": "FLYP", "search": {"lr": [1e-5, 1e-4, 1e-2]}}]
    config = demo_config(tmp_path, describer={}, methods=methods, shifts=["tint", "clean"], seeds=[0, 1])
    experiment = load_experiment(config, "quick", {"output": str(tmp_path / "runs")})
    experiment.weights["source"] = tmp_path / "weights.safetensors"  # not read: no run starts here
    scores = [
        {"choice": {"lr": lr}, "label_free": {"balance": value}}
        for lr, value in ((1e-5, 0.1), (1e-4, 0.2), (1e-2, 0.5))
    ]
    wanted = {}
    for shift in ("tint", "clean"):
        record = {"shift": shift, "entry": "flyp_pl", "chosen": {"lr": 1e-5}, "scores": scores}
        requests, _ = runner.other_requests(
            experiment, experiment.methods[0], record, runner.RunHow(), "balance", candidate_runs=True
        )
        assert record["label_free_pick"] == {"lr": 1e-2}
        wanted[shift] = sorted(Path(request.config.name).name for request in requests)
    assert wanted == {
        "tint": ["flyp_pl-lr0.0001-s0", "flyp_pl-lr0.01-s0", "flyp_pl-lr0.01-s1"],
        "clean": ["flyp_pl-lr0.01-s0", "flyp_pl-lr0.01-s1"],
    }


def test_an_extending_experiment_keeps_the_files_of_the_file_it_extends():
    """The benchmark's file extends the demo's, whose CoFT+ entry names class descriptions beside the demo's file:
    the benchmark names them relative to its own file (the same on every machine), and its runs read that file."""
    experiment = load_experiment(package_experiment_file("domain-shift"))
    entry = next(e for e in experiment.methods if e.name == "coft_plus")
    named = entry.overrides["method_options"]["class_descriptions"]
    assert named == "../../data/fmnist/class_descriptions.json"
    experiment.weights["source"] = Path("source.safetensors")  # as if pre-trained: only the file option is read
    config = runner.run_config(experiment, entry, "rotation", 0, "coft_plus-s0")
    demo_file = package_experiment_file("demo")
    assert (
        Path(config.method_options["class_descriptions"])
        == (demo_file.parent / "../data/fmnist/class_descriptions.json").resolve()
    )
    assert Path(config.method_options["class_descriptions"]).is_file()
