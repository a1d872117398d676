"""latteclip from Python: one function per job, taking typed settings and returning typed results.

The command line parses its flags into these settings, calls these functions and prints what they return, so a
notebook gets exactly what a command does. `configure` (and `adapt_config`) build a `RunConfig` the way the
command line does: package defaults, the dataset's and method's files, a YAML file, then the values given.
Layer: above the engine, the experiments and the report (adapt writes one); below the command line.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latteclip.config import Inference, RunConfig, read_yaml
from latteclip.config import configure as configure_values
from latteclip.data import DatasetOptions, build_dataset
from latteclip.data.subsets import held_back_positions
from latteclip.describe.jobs import image_hashes
from latteclip.describe.prompts import load_prompts
from latteclip.describe.runner import Summary
from latteclip.describe.settings import DescribeSettings
from latteclip.describe.store import DescriptionStore, default_store_path
from latteclip.engine.checkpoint import load_final_checkpoint
from latteclip.engine.choice import (
    DEFAULT_LRS,
    HOLDOUT_SHARE,
    Candidate,
    ImageLists,
    candidate_config,
    candidate_grid,
    check_score,
    choice_record,
    held_back,
    pick,
    score_run,
    sized_schedule,
    split_images,
    verdict,
)
from latteclip.engine.describing import check_analysis, describe_training_images, image_hasher
from latteclip.engine.evaluate import evaluate as evaluate_method
from latteclip.engine.export import ExportedFiles, export_open_clip
from latteclip.engine.lmm_zeroshot import lmm_zero_shot as lmm_zero_shot_run
from latteclip.engine.predict import Prediction, collect_images, format_csv, predict_files
from latteclip.engine.results import RESULTS_FILE, RunResults
from latteclip.engine.score_names import default_score
from latteclip.engine.session import dataset_options, method_from_checkpoint, pick_device
from latteclip.engine.trainer import run_training
from latteclip.errors import LatteclipError
from latteclip.experiments.archive import RunArchive
from latteclip.experiments.cost import StepCost, gpu_hours, step_cost
from latteclip.experiments.jobs import RunState, run_or_reuse
from latteclip.experiments.launch import LaunchSettings, Outcome
from latteclip.experiments.machine import machine_description, use_threads
from latteclip.experiments.orchestrate import (
    PlanSize,
    launch_settings,
    plan_size,
    plan_states,
    run_plan,
    shift_states,
)
from latteclip.experiments.paper_tables import FIGURE_6, comparison_tables, plan_cells, share_points
from latteclip.experiments.plan import Plan, PlannedRun, is_shift_experiment, load_plan, load_shift_experiment
from latteclip.experiments.runner import ExperimentRuns, describe_stage
from latteclip.experiments.runner import run_experiment as run_experiment_loop
from latteclip.experiments.spec import Experiment, load_experiment, package_experiment_file
from latteclip.experiments.tables import results_table
from latteclip.methods import build_options, get_method
from latteclip.methods.base import Method
from latteclip.paths import atomic_write_bytes, check_writable_file, check_writable_folder
from latteclip.report import write_report
from latteclip.values import at_least

__all__ = [
    "Adaptation",
    "Descriptions",
    "Evaluation",
    "Export",
    "Inference",
    "adapt",
    "adapt_candidates",
    "adapt_config",
    "configure",
    "describe",
    "evaluate",
    "export",
    "lmm_zero_shot",
    "load_model",
    "predict",
    "run_experiment",
    "train",
]

Progress = Callable[[str], None]
PREDICTIONS_FILE = "predictions.csv"
ZERO_SHOT_PREDICTIONS_FILE = "predictions-zeroshot.csv"  # written when the verdict says to use zero-shot's
ADAPT_STEPS = 6


def configure(config_file: str | None = None, **options: Any) -> RunConfig:
    """A run's configuration as the command line builds it: package defaults, the dataset's schedule, the method's
    defaults, `config_file`, then `options` (RunConfig fields; a method's own under method_options={...})."""
    return configure_values(options, config_file)


def train(config: RunConfig) -> RunResults:
    """Train (or evaluate zero-shot) the run `config` describes, in `config.run_dir`; its results.json."""
    return run_training(config)


def load_model(checkpoint: str | Path, device: str = "cpu") -> Method:
    """The method saved in a run's final.pt, rebuilt for inference on `device`."""
    return method_from_checkpoint(load_final_checkpoint(checkpoint), pick_device(device))


# --- measuring and using a trained checkpoint ---------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    checkpoint: Path
    method: str
    dataset: str
    report: dict[str, Any]  # top1, n, unreadable, per_class, confusion (engine.evaluate)
    out: Path  # the JSON file it was written to


DATA_OPTIONS = ("limit", "seed", "classnames", "templates", "domain", "split_file", "prompt_set")


def evaluate(
    checkpoint: str | Path,
    dataset: str | None = None,
    root: str | None = None,
    data: Mapping[str, Any] | None = None,
    inference: Inference = Inference(),
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Evaluation:
    """Accuracy of a run's final.pt on the test split of its own dataset, or of `dataset` at `root`.

    `data` sets DATA_OPTIONS of the test data; the training run's own apply only to its own dataset. The
    precision is the run's, so the accuracy matches its results.json on GPU too. Written to `out` (default:
    eval.json beside the checkpoint).
    """
    inference.check()
    out = Path(out) if out else Path(checkpoint).with_name("eval.json")
    check_writable_file(out, "--out", overwrite)
    payload = load_final_checkpoint(checkpoint)
    saved = payload["config"]
    dataset, root = dataset or saved["dataset"], root or saved["root"]
    inherited = saved if (dataset, root) == (saved["dataset"], saved["root"]) else {}
    given = {k: v for k, v in (data or {}).items() if k in DATA_OPTIONS and v is not None and v != ""}
    options = DatasetOptions.from_run(
        {**inherited, "seed": saved.get("seed", 0), "prompt_set": saved.get("prompt_set", "clip"), **given}
    )
    test_set = build_dataset(dataset, root, "test", None, options)  # the data is checked before the model loads
    method = method_from_checkpoint(payload, pick_device(inference.device))
    test_set.transform = method.loaded.eval_transform()
    if test_set.info.num_classes != method.info.num_classes:
        raise LatteclipError(
            f"{dataset} has {test_set.info.num_classes} classes but the checkpoint has {method.info.num_classes}"
        )
    report = evaluate_method(method, test_set, dataclasses.replace(inference, precision=saved.get("precision", "auto")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(checkpoint), "dataset": dataset, **report}, indent=1))
    return Evaluation(Path(checkpoint), payload["method"], dataset, report, out)


def predict(
    model: str | Path | Method,
    paths: Sequence[str | Path],
    top_k: int = 5,
    inference: Inference = Inference(device="cpu", batch_size=64),
) -> list[Prediction]:
    """Top-k classes of image files and of the images under folders (recursive), in that order.

    `model` is a run's final.pt or a method `load_model` returned. Unreadable files keep an empty prediction;
    refused when no file at all could be read.
    """
    at_least(top_k, 1, "--top-k")
    inference.check()
    files = collect_images(paths)
    method = model if isinstance(model, Method) else load_model(model, inference.device)
    predictions = predict_files(method, files, top_k, inference)
    if not any(p.readable for p in predictions):
        raise LatteclipError(
            f"none of the {len(files)} files could be read as an image (first: {files[0]}); nothing was written"
        )
    return predictions


@dataclass(frozen=True)
class Export:
    files: ExportedFiles
    method: str
    classes: int


def export(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Export:
    """A run's final.pt as plain OpenCLIP weights, a classifier file and a README in `out`.

    A non-empty `out` is refused unless `overwrite`.
    """
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LatteclipError(f"--out {out} is not empty; pass --overwrite to replace what it holds, or another folder")
    if not out.is_dir():
        check_writable_folder(out, "--out")
    method = load_model(checkpoint, "cpu")
    return Export(export_open_clip(method, out), method.name, method.info.num_classes)


# --- the description stage ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Descriptions:
    store: Path
    dataset: str
    summary: Summary | None  # None when no describer ran (import or export only)
    describer: str | None  # its backend and model, as the summary names it
    imported: int | None  # lines imported (None: no import)
    exported: int | None  # lines exported (None: no export)
    unreadable: list[str]  # training images that could not be read (never described)

    @property
    def complete(self) -> bool:
        """Every description asked for is stored and every image was readable."""
        return (self.summary is None or self.summary.complete) and not self.unreadable


def check_describe_request(
    config: RunConfig, settings: DescribeSettings, batch_out: str | None, batch_in: str | list[str] | None, moves: bool
) -> None:
    """Refuse, before any work, a description request that cannot be carried out."""
    if not (settings.lmm or moves):
        raise LatteclipError(
            "nothing to do: choose a describer with --lmm (openai, transformers, offline, batch), "
            "or pass --import/--export"
        )
    files = bool(batch_out) + bool(batch_in)
    if settings.lmm == "batch" and files != 1:
        raise LatteclipError(
            "--lmm batch needs one of --batch-out FILE.jsonl (write the requests) or --batch-in "
            "RESULTS.jsonl (store the answers)"
        )
    if files and settings.lmm != "batch":
        raise LatteclipError("--batch-out/--batch-in go with --lmm batch")
    if settings.batch_shards > 1 and not batch_out:
        raise LatteclipError("--batch-shards N splits the requests --batch-out writes: pass --batch-out FILE.jsonl")
    if settings.lmm == "batch" and not settings.lmm_model:
        raise LatteclipError("--lmm batch needs --lmm-model NAME: the model the batch runs (each request names it)")
    if settings.true_class_members is not None and settings.lmm and not config.store:
        raise LatteclipError(
            "--true-class-members makes groups from the TRUE labels: pass a separate --store FILE for "
            "them, so label-free training never reads them by accident"
        )


def describe(
    config: RunConfig,
    settings: DescribeSettings,
    prompts: str | None = None,
    batch_out: str | None = None,
    batch_in: str | list[str] | None = None,
    import_file: str | None = None,
    export_file: str | None = None,
) -> Descriptions:
    """Describe every training image of `config`'s dataset that the store lacks; import/export JSON lines.

    `prompts` is a prompts file or 'paper' (over the bundled ones, the dataset's and `settings.prompts`).
    With `settings.lmm == "batch"`: write the missing requests to `batch_out`, or store the answers of `batch_in`.
    """
    check_describe_request(config, settings, batch_out, batch_in, bool(import_file or export_file))
    train_set = build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
    check_analysis(settings, train_set)
    with DescriptionStore(config.store) as store:
        hashes = image_hashes(train_set)
        imported = exported = None
        if import_file:
            imported = store.import_jsonl(import_file, image_hasher(train_set, hashes), train_set.info.name)
        summary = describer = None
        if settings.lmm:
            stage_prompts = load_prompts(train_set.info.prompts, settings.prompts, prompts)
            summary, describer = describe_training_images(
                config, settings, stage_prompts, train_set, hashes, store, batch_out, batch_in
            )
        if export_file:
            images = {h: s.path for s, h in zip(train_set.samples, hashes) if h is not None}
            exported = store.export_jsonl(export_file, images)
        unreadable = [s.path for s, h in zip(train_set.samples, hashes) if h is None]
        return Descriptions(store.path, train_set.info.name, summary, describer, imported, exported, unreadable)


def lmm_zero_shot(
    config: RunConfig,
    settings: DescribeSettings,
    prompts: str | None = None,
    on_answers: Callable[[Summary, str], None] | None = None,
) -> RunResults | None:
    """The LMM zero-shot baseline: the LMM picks each test image's class; a run folder like other methods'.

    None while some test images have no answer yet (a rerun asks for the rest); `on_answers` sees the describer's
    summary and name before scoring.
    """
    return lmm_zero_shot_run(config, settings, prompts, on_answers)


# --- the whole job on unlabeled images ---------------------------------------------------------------------
@dataclass(frozen=True)
class Adaptation:
    zero_shot: RunResults  # the zero-shot run's results.json
    adapted: RunResults  # the chosen candidate's
    zero_shot_dir: Path
    run_dir: Path  # the chosen candidate's run folder (final.pt)
    predictions: Path  # predictions.csv: every input image's top classes, by the chosen candidate
    report: Path  # report.html
    store: Path  # the description store
    choice: dict[str, Any]  # the adapt folder's results.json "label_free_choice": score, candidates, chosen
    verdict: dict[str, Any]  # trust, use ("adapted" or "zero-shot"), why, signals
    zero_shot_predictions: Path | None = None  # predictions-zeroshot.csv, written when the verdict says to use them

    @property
    def model(self) -> Path:
        return self.run_dir / "final.pt"


SCHEDULE_KEYS = ("batch_size", "max_steps", "epochs", "warmup_steps")


def adapt_config(root: str, classnames: str, config_file: str | None = None, **options: Any) -> RunConfig:
    """The adapted run's configuration: every image under `root` (a folder, or a .txt list) with the class names of
    `classnames`, trained with options["method"] (default latteclip) in OUTPUT/NAME (default runs/adapt-ROOTNAME),
    with the adaptation folder's own description store unless options["store"] names one.

    Unless the options or the file set one of SCHEDULE_KEYS, the schedule is sized for the folder
    (choice.sized_schedule): the paper's 50 epochs of batch 512 fit none of a practitioner's folders.
    """
    method = options.get("method") or "latteclip"
    method_cls = get_method(method)
    if method_cls.reads_train_labels or not method_cls.trains:
        raise LatteclipError(
            f"adapt trains a label-free method; --method {method} is not one "
            "(latteclip, flyp_pl, reclip, coft, coft_plus)"
        )
    folder = Path(options.get("output") or "runs") / (options.get("name") or f"adapt-{Path(root).stem}")
    fixed = {
        "dataset": "images",
        "root": root,
        "classnames": classnames,
        "method": method,
        "output": str(folder),
        "name": method,
        "store": options.get("store") or str(folder / "descriptions.sqlite"),
    }
    config = configure_values({**options, **fixed}, config_file)
    given = set(options) | (set(read_yaml(config_file)) if config_file else set())
    if given.isdisjoint(SCHEDULE_KEYS):
        images = len(build_dataset(config.dataset, config.root, "train", None, dataset_options(config)))
        trained = images - len(held_back_positions(images, HOLDOUT_SHARE, config.seed)) if images > 1 else images
        config = configure_values({**sized_schedule(trained), **options, **fixed}, config_file)
    return config


def described_kinds(config: RunConfig) -> list[str]:
    """What the run's method reads from the description store (LatteCLIP: its image and group texts; CoFT+: an LLM's
    descriptions of each class name, unless a --class-descriptions file gives them)."""
    options = build_options(get_method(config.method), dict(config.method_options))
    if getattr(options, "llm_descriptions", False) and not options.class_descriptions:
        return ["classes"]
    return [kind for kind in getattr(options, "texts", []) if kind != "class"]


def adapt_candidates(choose: Sequence[str] | None, given: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Candidates from `--choose KEY=A,B,C` texts (every combination); without them None (adapt's default set), or the
    configuration as it is when the user fixed the learning rate (`given` holds the options set)."""
    if not choose:
        return [{}] if "lr" in given else None
    choices: dict[str, list[str]] = {}
    for text in choose:
        key, sep, values = text.partition("=")
        if not sep or not key.strip():
            raise LatteclipError(f"--choose {text}: give an option and its values, e.g. --choose lr=1e-7,1e-6,1e-5")
        choices[key.strip().replace("-", "_")] = [v.strip() for v in values.split(",") if v.strip()]
    return candidate_grid(choices)


def adapt(
    config: RunConfig,
    settings: DescribeSettings | None = None,
    prompts: str | None = None,
    progress: Progress = print,
    candidates: Sequence[Mapping[str, Any]] | None = None,
    choose_by: str | None = None,
    holdout: float | None = None,
) -> Adaptation:
    """Zero-shot, descriptions, every candidate's training and scores, the label-free choice, predictions.csv and the
    report, each reused when already done (a rerun after a kill picks up where it stopped).

    `config` is the adapted run's (see `adapt_config`); `candidates` are option sets over it (default: the learning
    rates of choice.DEFAULT_LRS), each trained in its own folder on all but a seeded `holdout` share (default
    choice.HOLDOUT_SHARE) of the images and scored on that share (engine.choice); the best by `choose_by` (default
    score_names.default_score: prediction balance plus agreement with the describer where an LMM is given, else
    prediction balance alone) is kept.
    """
    folder = Path(config.output)
    kinds = described_kinds(config)
    if kinds and (settings is None or not settings.lmm):
        raise LatteclipError(
            f"--method {config.method} reads descriptions ({', '.join(kinds)}): choose a describer with --lmm "
            "openai --lmm-url URL (a multimodal model behind an OpenAI-compatible server), --lmm "
            "transformers or --lmm offline"
        )
    described = describes_held_back(settings)
    score = choose_by or default_score(described)
    check_score(score, described)
    options = (
        [candidate_grid({k: [v] for k, v in c.items()})[0] for c in candidates]
        if candidates is not None
        else [{"lr": lr} for lr in DEFAULT_LRS]
    )
    if not options:
        raise LatteclipError("no candidate to train: give at least one, e.g. --choose lr=1e-6")
    lists = split_images(config, folder, HOLDOUT_SHARE if holdout is None else holdout)
    zero_shot = dataclasses.replace(config, method="zeroshot", name="zeroshot", method_options={})
    progress(f"[1/{ADAPT_STEPS}] zero-shot {config.model} on {config.root}")
    zero_shot_results = run_or_reuse(zero_shot)
    progress(f"      {measured(zero_shot_results)}; run folder {zero_shot.run_dir}")
    held_too = ", and of the held-back images for the label-free choice" if described else ""
    progress(f"[2/{ADAPT_STEPS}] descriptions ({', '.join(kinds) or f'none: {config.method} reads none'}){held_too}")
    describe_candidates_images(config, settings, prompts, kinds, lists, progress)
    configs = train_candidates(config, options, lists, progress)
    progress(f"[4/{ADAPT_STEPS}] label-free scores on {lists.held_count} held-back images ({lists.held})")
    held = held_back(config, lists, zero_shot.run_dir, described)
    zero_shot_results = score_run(zero_shot.run_dir, zero_shot, held)
    scored = [Candidate(dict(o), c, score_run(c.run_dir, c, held)) for o, c in zip(options, configs)]
    chosen = pick(scored, score)
    judged = verdict(zero_shot_results, scored, chosen, score)
    progress(f"      chose {chosen.config.name} by {score} ({chosen.scores[score]:.4f})")
    return finish_adaptation(config, zero_shot, zero_shot_results, scored, chosen, score, judged, progress)


def describes_held_back(settings: DescribeSettings | None) -> bool:
    """Whether the describer reads the held-back images: for every method once an LMM is given, so that the
    describer's agreement scores every candidate."""
    return settings is not None and bool(settings.lmm)


def describe_candidates_images(
    config: RunConfig,
    settings: DescribeSettings | None,
    prompts: str | None,
    kinds: list[str],
    lists: ImageLists,
    progress: Progress,
) -> None:
    """The descriptions the candidates read, and the describer's own reading of each held-back image."""
    folder = Path(config.output)
    if kinds:  # groups are drawn among the images a candidate trains on: those are described, and the held-back ones
        describe_stage(
            dataclasses.replace(config, root=str(lists.train)),
            dataclasses.replace(settings, kinds=kinds),
            folder / "describe",
            progress,
            prompts,
        )
    if describes_held_back(settings):  # what the describer says of each held-back image: a reference to agree with
        describe_stage(
            dataclasses.replace(config, root=str(lists.held)),
            dataclasses.replace(settings, kinds=["image"]),
            folder / "describe-held",
            progress,
            prompts,
        )


def train_candidates(
    config: RunConfig, options: Sequence[Mapping[str, Any]], lists: ImageLists, progress: Progress
) -> list[RunConfig]:
    """Train (or reuse, or resume) every candidate in its own run folder inside the adapt folder."""
    configs = [candidate_config(config, o, lists) for o in options]
    for number, candidate in enumerate(configs, start=1):
        progress(
            f"[3/{ADAPT_STEPS}] training {candidate.name} ({number} of {len(configs)}) on {lists.train_count} images"
        )
        progress(f"      {measured(run_or_reuse(candidate))}; run folder {candidate.run_dir}")
    return configs


def finish_adaptation(
    config: RunConfig,
    zero_shot: RunConfig,
    zero_shot_results: RunResults,
    scored: Sequence[Candidate],
    chosen: Candidate,
    score: str,
    judged: dict,
    progress: Progress,
) -> Adaptation:
    """Predictions, the report and the adapt folder's results.json, from the chosen candidate."""
    folder = Path(config.output)
    record_path = folder / RESULTS_FILE
    earlier = json.loads(record_path.read_text()) if record_path.is_file() else {}
    same_pick = earlier.get("label_free_choice", {}).get("chosen", {}).get("run_dir") == str(chosen.config.run_dir)
    progress(f"[5/{ADAPT_STEPS}] predictions for every image")
    adapted = dataclasses.replace(chosen.config, root=config.root)
    predictions = write_predictions(adapted, folder / PREDICTIONS_FILE, reuse=same_pick)
    zero_shot_predictions = None
    if judged["use"] == "zero-shot":
        zero_shot_predictions = write_predictions(zero_shot, folder / ZERO_SHOT_PREDICTIONS_FILE)
    judged = {**judged, "predictions": str(zero_shot_predictions or predictions)}
    progress(f"[6/{ADAPT_STEPS}] report")
    choice = choice_record(score, scored, chosen)
    report = write_report([chosen.config.run_dir, zero_shot.run_dir], folder / "report", judged, choice)
    atomic_write_bytes(record_path, json.dumps({"label_free_choice": choice, "verdict": judged}, indent=1).encode())
    store = Path(config.store) if config.store else default_store_path()
    return Adaptation(
        zero_shot_results,
        chosen.results,
        zero_shot.run_dir,
        chosen.config.run_dir,
        predictions,
        report,
        store,
        choice,
        judged,
        zero_shot_predictions,
    )


def write_predictions(config: RunConfig, path: Path, reuse: bool = True) -> Path:
    """predictions.csv for every training image of `config` (the rows of `predict --format csv`); reused when `reuse`
    and newer than the run's final.pt."""
    final = config.run_dir / "final.pt"
    if reuse and path.is_file() and path.stat().st_mtime >= final.stat().st_mtime:
        return path
    images = build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
    files = [Path(images.source.location) / sample.path for sample in images.samples]
    method = load_model(final, config.device)
    rows = predict_files(method, files, min(5, method.info.num_classes), config.inference)
    atomic_write_bytes(path, format_csv(rows).encode())
    return path


def measured(results: RunResults) -> str:
    """One line on what a run measured: top-1 with labels, the label-free diagnostics without."""
    if results["top1"] is not None:
        return f"top-1 {100 * results['top1']:.2f}% on {results['evaluated_on']}"
    adapted = results["diagnostics"]["adapted"]
    return (
        f"no labels: {100 * adapted['top_class_share']:.1f}% of images in the top class ({adapted['top_class']}), "
        f"{100 * results['diagnostics']['changed_from_zero_shot']:.1f}% changed from zero-shot"
    )


def run_experiment(
    experiment: Experiment | str | Path,
    choose: bool = False,
    progress: Progress = print,
    archive: RunArchive | None = None,
    fresh: frozenset[str] = frozenset(),
    launcher: LaunchSettings | None = None,
) -> ExperimentRuns:
    """Every entry of an experiment file (the demo's, the benchmark's) on every shift and seed; pre-training cached.

    `choose`: pick each entry's `search` options on held-out images first (the benchmark). `archive`: finished runs
    a checkout keeps, reused when their configuration is the same; entries named in `fresh` train anew. `launcher`
    (`experiment_launch`): the runs go as jobs to local devices at once or to Slurm, as the paper's do.
    """
    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment)
    return run_experiment_loop(experiment, choose, progress, archive, fresh, launcher=launcher)


# --- experiments over datasets (the paper's) ---------------------------------------------------------------------
@dataclass(frozen=True)
class ExperimentStatus:
    states: list[tuple[PlannedRun, RunState]]  # each run: done, running, interrupted, failed (with its line), missing
    size: PlanSize  # runs, description stages, descriptions and LMM hours, training steps of the whole plan
    step_cost: StepCost | None = None  # the measured seconds of a training step, when given

    @property
    def gpu_hours(self) -> float | None:
        """Training steps x measured seconds a step; None without a GPU measurement."""
        return gpu_hours(self.size.train_steps, self.step_cost) if self.step_cost else None


def experiment_plan(experiment: str | Path, **selection: Any) -> Plan:
    """An experiment file over datasets (`paper`, or a file), narrowed by `selection` (plan.load_plan's arguments:
    datasets, entries, seeds, tables, data_root, output, overrides, describe)."""
    if is_shift_experiment(str(experiment)):
        raise LatteclipError(
            f"{experiment} is an experiment over shifted domains: run it with api.run_experiment (or `latteclip "
            "experiment run`, `latteclip demo`, benchmarks/domain_shift.py)"
        )
    return load_plan(str(experiment), **selection)


def run_experiment_plan(plan: Plan, launch: LaunchSettings, progress: Progress = print) -> list[Outcome]:
    """The description stages, then every run not finished yet through the launcher (local devices or Slurm)."""
    return run_plan(plan, launch, progress)


def experiment_status(
    plan: Plan, step_seconds: float | None = None, step_benchmark: str | Path | None = None
) -> ExperimentStatus:
    """Each run's state and the plan's size; the GPU hours from `step_seconds` or a `benchmarks/train_step.py --json`
    file measured on a GPU (`step_benchmark`)."""
    cost = step_cost(step_seconds, str(step_benchmark) if step_benchmark else None)  # a bad file: before the work
    return ExperimentStatus(plan_states(plan), plan_size(plan), cost)


def experiment_tables(plan: Plan, page: Path | None = None) -> str:
    """The page: our cells (mean ± std over seeds) beside the paper's, from finished runs only. With the `page` it is
    written to, Figure 6 (when selected and some of its points are finished) is also drawn beside it, PAGE-figure6.png.
    """
    cells = plan_cells(plan)
    figure = None
    if page is not None and FIGURE_6 in plan.tables:
        from latteclip.report.plots import plot_curves

        series = [
            (
                method,
                [100 * s for s, v in shares.items() if v is not None],
                [v for v in shares.values() if v is not None],
            )
            for method, shares in share_points(plan, cells).items()
        ]
        if any(steps for _, steps, _ in series):
            figure = f"{Path(page).stem}-figure6.png"
            plot_curves(
                series,
                Path(page).parent / figure,
                "average top-1 (%)",
                percent=True,
                xlabel="training images (%)",
                log_x=True,
            )
    return comparison_tables(plan, cells, figure)


def shift_experiment(experiment: str | Path, **selection: Any) -> Experiment:
    """An experiment over the proxy's shifted domains (`demo`, `domain-shift`) narrowed like one over datasets
    (plan.load_shift_experiment's arguments: shifts, entries, seeds, output, run), for `run_experiment`."""
    return load_shift_experiment(str(experiment), **selection)


def experiment_launch(experiment: Plan | Experiment, **options: Any) -> LaunchSettings:
    """The launcher's settings for an experiment (LaunchSettings' fields; None keeps a default); its files in
    OUTPUT/jobs."""
    return launch_settings(experiment.output, **options)


def shift_results_table(experiment: Experiment, runs: ExperimentRuns) -> str:
    """The markdown table of an experiment over shifted domains (mean ± std over seeds per shift)."""
    return results_table(experiment, runs.cells)


def shift_status(experiment: Experiment, archive: RunArchive | None = None) -> list[tuple[str, RunState]]:
    """Each run of an experiment over shifted domains: done (in its folder or `archive`), running, interrupted,
    failed, or missing (a target run whose held-out choice is not made yet waits for it); nothing trains."""
    return shift_states(experiment, archive)[0]


def shift_tables(experiment: Experiment, archive: RunArchive | None = None) -> str:
    """The table of an experiment over shifted domains from its finished runs only (– where a cell has none)."""
    return results_table(experiment, shift_states(experiment, archive)[1])


# --- the demo -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Demo:
    header: str  # what was pre-trained and what the table shows
    table: str  # markdown: top-1 per method and shift
    results: Path  # results.md (header and table)
    summary: Path  # demo.json: pre-training, cells, machine, time
    reports: list[Path]  # report.html per shift
    seconds: float


def demo(
    config_file: str | Path | None = None,
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: Progress = print,
) -> Demo:
    """The whole pipeline offline on CPU: pre-train the tiny CLIPs (cached), adapt to the shifted domains, the table,
    its summary and a report per shift. `overrides`: the experiment file's output, root, threads or shifts."""
    experiment = load_experiment(
        config_file or package_experiment_file("demo"), "quick" if quick else None, dict(overrides or {})
    )
    threads = use_threads(experiment.threads)
    started = time.time()
    runs_count = len(experiment.shifts) * len(experiment.methods) * len(experiment.seeds)
    progress(
        f"demo: {runs_count} runs on {', '.join(experiment.shifts)} with {threads} torch thread(s); output in "
        f"{experiment.output}"
    )
    runs = run_experiment(experiment, choose=False, progress=progress)
    source, describer = runs.pretrained["source"], runs.pretrained["describer"]
    table = results_table(experiment, runs.cells)
    header = (
        f"Pre-trained {experiment.model}: {100 * source.summary['clean_test_top1']:.2f}% zero-shot top-1 on the clean "
        f"Fashion-MNIST test set. Target domains: top-1 (%) on each shifted test split"
        + (f", mean ± std over seeds {experiment.seeds}" if len(experiment.seeds) > 1 else "")
        + "."
    )
    experiment.output.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": experiment.source,
        "quick": bool(quick),
        "pretrained": source.summary,
        "describer": describer.summary if describer else None,
        "cells": {f"{name}|{shift}": cell for (name, shift), cell in runs.cells.items()},
        "machine": machine_description(),
        "seconds": time.time() - started,
    }
    (experiment.output / "demo.json").write_text(json.dumps(summary, indent=1))
    (experiment.output / "results.md").write_text(f"{header}\n\n{table}\n")
    reports = shift_reports(experiment, runs.run_dirs)
    return Demo(
        header, table, experiment.output / "results.md", experiment.output / "demo.json", reports, time.time() - started
    )


def shift_reports(experiment: Experiment, run_dirs: Mapping[tuple[str, str], Path]) -> list[Path]:
    """Per shift, the report of the reported method's run against the other methods' runs.

    The reported method is the experiment's `report` entry, else the first label-free method that trains.
    """
    subject = experiment.report or next((e.name for e in experiment.label_free_trainers()), None)
    if subject is None:
        return []
    paths = []
    for shift in experiment.shifts:
        others = [
            run_dirs[(e.name, shift)] for e in experiment.methods if e.name != subject and (e.name, shift) in run_dirs
        ]
        paths.append(write_report([run_dirs[(subject, shift)], *others], experiment.output / shift / "report"))
    return paths
