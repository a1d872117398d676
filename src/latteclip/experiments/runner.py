"""Runs of an experiment: its pre-trainings, each entry's choice on held-out images, every (shift, entry, seed) run.

A finished run is reused when its run folder holds results of the same configuration, or when the
experiment's archive (small files a checkout keeps, see `archive.py`) does; an interrupted one resumes
from its last checkpoint, so a stopped demo or benchmark continues where it was and reaches the same
numbers. The description stage an entry needs runs as a library call before the entry's run trains.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from latteclip.config import RunConfig, resolve_config
from latteclip.data import ImageDataset, build_dataset
from latteclip.describe.clip_vocab import describer_model_id, read_vocabulary
from latteclip.describe.settings import DescribeSettings, resolve_settings
from latteclip.engine.choice import HeldBack, held_back_of, score_run
from latteclip.engine.describing import describe_run
from latteclip.engine.pretraining import PretrainedWeights, pretrained_weights
from latteclip.engine.results import RunResults, computed_as, has_results, read_results
from latteclip.engine.session import dataset_options, pick_device, resolve_precision
from latteclip.engine.trainer import run_training
from latteclip.errors import LatteclipError
from latteclip.experiments.archive import RunArchive, comparable
from latteclip.experiments.machine import elapsed
from latteclip.experiments.spec import Experiment, MethodEntry, deep_merge
from latteclip.experiments.tables import Cells

Progress = Callable[[str], None]
SUMMARY_PREFIXES = ("analysis/", "mixer/", "prototypes/", "coft/")  # training-log metrics a run's summary averages
STAGES = ("descriptions",)  # what an entry may list under `needs`


def pretrain_source(experiment: Experiment) -> PretrainedWeights:
    """The source model: the experiment's pre-training, from the cache when it was done before."""
    values = {"method": "pretrain", "model": experiment.model, "root": experiment.root, **experiment.pretrain}
    source = pretrained_weights(resolve_config(values))
    experiment.weights["source"] = source.path
    return source


def pretrain_describer(experiment: Experiment) -> PretrainedWeights | None:
    """The describer's model (None without a `describer` section), pre-trained or from the cache.

    It starts from the source's pre-training options with the section's own on top, and becomes the
    description stage's `describer_model` / `describer_pretrained`.
    """
    if not experiment.describer:
        return None
    model = experiment.describer["model"]
    values = deep_merge(
        {"method": "pretrain", "model": model, "root": experiment.root, **experiment.pretrain},
        experiment.describer.get("pretrain") or {},
    )
    describer = pretrained_weights(resolve_config(values))
    experiment.weights["describer"] = describer.path
    experiment.describe = {**experiment.describe, "describer_model": model, "describer_pretrained": str(describer.path)}
    return describer


def offline_describer_name(describe: dict[str, Any], dataset: str, model: str, pretrained: str) -> str | None:
    """The model name the offline describer stores its texts under for `dataset` (None for other describers)."""
    if describe.get("lmm") != "offline":
        return None
    _, digest = read_vocabulary(describe.get("vocabulary"), dataset)
    if describe.get("describer_model"):
        return describer_model_id(describe["describer_model"], describe.get("describer_pretrained"), digest)
    return describer_model_id(model, pretrained, digest)


def run_config(
    experiment: Experiment, entry: MethodEntry, dataset: str, seed: int, name: str, choice: dict[str, Any] | None = None
) -> RunConfig:
    """One run's configuration: package defaults, then the shared run options, the entry's, and the chosen values.

    An entry that needs descriptions reads those of the experiment's describer only (unless it names its own).
    """
    if entry.weights not in experiment.weights:
        raise LatteclipError(
            f"the {entry.weights} model of {experiment.source} is not pre-trained yet (pretrain_{entry.weights} first)"
        )
    values: dict[str, Any] = {
        "method": entry.method,
        "dataset": dataset,
        "root": experiment.root,
        "model": experiment.describer["model"] if entry.weights == "describer" else experiment.model,
        "pretrained": str(experiment.weights[entry.weights]),
        "seed": seed,
        "output": str(experiment.output),
        "name": name,
    }
    values = deep_merge(values, experiment.run)
    values = deep_merge(values, entry.overrides)
    values = deep_merge(values, choice or {})
    options = values.get("method_options") or {}
    if options.get("class_descriptions") and not Path(options["class_descriptions"]).is_absolute():
        # files named in an experiment are relative to the experiment file
        where = (Path(experiment.source).parent / options["class_descriptions"]).resolve()
        values["method_options"] = {**options, "class_descriptions": str(where)}
    if "descriptions" in entry.needs and "described_by" not in (values.get("method_options") or {}):
        described_by = offline_describer_name(experiment.describe, dataset, values["model"], values["pretrained"])
        if described_by:
            values["method_options"] = {**(values.get("method_options") or {}), "described_by": described_by}
    return resolve_config(values)


def run_or_reuse(
    config: RunConfig, prepare: Callable[[RunConfig], None] | None = None, fresh: bool = False
) -> RunResults:
    """Train and evaluate, or return the results of a finished run with the same configuration in its folder.

    An interrupted run with the same configuration continues from its last checkpoint. `prepare` (e.g.
    the description stage for the run's training images) runs only when the run trains. `fresh` trains
    anew even over a finished run of the same configuration (its code changed).
    """
    run_dir = config.run_dir
    same = not fresh and same_config(config)
    if same and has_results(run_dir):
        results = read_results(run_dir)
        if computed_here_alike(results, config):
            return results
    resume = same and (run_dir / "last.pt").is_file()
    # the experiment's own folder: a run of another configuration is replaced
    config = dataclasses.replace(config, resume=resume, overwrite=not resume)
    if prepare is not None:
        prepare(config)
    return run_training(config)


def computed_here_alike(results: RunResults, config: RunConfig) -> bool:
    """A finished run is reused only where this run would compute in the same precision on the same kind of device."""
    device = pick_device(config.device)
    return computed_as(results, resolve_precision(config.precision, device), device.type)


def same_config(config: RunConfig) -> bool:
    """Whether the run folder of `config` holds a run of the same configuration (finished or not)."""
    saved = config.run_dir / "config.yaml"
    return saved.is_file() and comparable(yaml.safe_load(saved.read_text()) or {}) == comparable(config.to_dict())


@dataclass
class FinishedRun:
    results: RunResults  # the run's results.json
    summary: dict[str, Any]  # what the tables read of it (run_summary)
    archived: bool = False  # taken from the archive: nothing ran now and the run folder may be absent


def finished_run(
    config: RunConfig,
    prepare: Callable[[RunConfig], None] | None = None,
    archive: RunArchive | None = None,
    fresh: bool = False,
    held: HeldOutScoring | None = None,
) -> FinishedRun:
    """`run_or_reuse`, preceded by the archive (when its entry has the same configuration) and recorded in it after.

    With `held`, the run is also scored label-free on those images (`engine.choice.score_run`, into its results); an
    archived entry without those scores is not reused, since scoring needs the model, which only a run folder keeps.
    """
    if archive is not None and not fresh:
        kept = archive.get(config)
        if kept is not None and computed_here_alike(kept["results"], config) and scored_on(kept["results"], held):
            return FinishedRun(kept["results"], kept["summary"], archived=True)
    results = run_or_reuse(config, prepare, fresh)
    if not scored_on(results, held):  # a finished run folder keeps its final model: scoring it needs no training
        results = score_run(config.run_dir, config, held.images())
    summary = run_summary(results, config.run_dir)
    if archive is not None:
        archive.put(config, results, summary)
    return FinishedRun(results, summary)


@dataclass(frozen=True)
class HeldOutScoring:
    """What candidates are scored on: the held-out images' digest (cheap: recognises scores stored before) and the
    images with the answers they are compared with (`held_out_images`), built the first time a candidate needs it."""

    digest: str
    images: Callable[[], HeldBack]


def scored_on(results: dict[str, Any], held: HeldOutScoring | None) -> bool:
    """Whether `results` hold label-free scores on the images of `held` (nothing to hold when `held` is None)."""
    if held is None:
        return True
    return "label_free_scores" in results and results.get("holdout", {}).get("digest") == held.digest


def held_out_scoring(experiment: Experiment, shift: str, progress: Progress) -> HeldOutScoring:
    """The held-out images of `shift` by digest, their answers built once when a candidate is scored."""
    config = held_out_zero_shot(experiment, shift)
    images = build_dataset(config.dataset, config.root, "test", config.limit, dataset_options(config))
    digest = hashlib.sha256("\n".join(sample.path for sample in images.samples).encode()).hexdigest()[:16]
    return HeldOutScoring(digest, functools.cache(lambda: held_out_images(experiment, shift, images, digest, progress)))


def held_out_zero_shot(experiment: Experiment, shift: str) -> RunConfig:
    """The zero-shot run on the held-out view of `shift`, whose model answers on the held-out images."""
    zero_shot = MethodEntry("zeroshot", "zeroshot", "CLIP zero-shot")
    return run_config(experiment, zero_shot, experiment.heldout(shift), experiment.seeds[0], f"select/{shift}/zeroshot")


def held_out_images(
    experiment: Experiment, shift: str, images: ImageDataset, digest: str, progress: Progress
) -> HeldBack:
    """The images each entry's options are chosen on for `shift` (the held-out view's test split: target training
    images no candidate trained on), read WITHOUT their labels, with the zero-shot model's answers and, where the
    experiment describes images, the describer's: what each candidate's label-free scores are computed on.

    The labelled choice reads these images' labels (their top-1); the scores never do, so the two can be compared.
    """
    seed = experiment.seeds[0]
    config = held_out_zero_shot(experiment, shift)
    run_or_reuse(config)  # its model gives the zero-shot answers (its run folder, never the archive: no model there)
    described = next((e for e in experiment.methods if "descriptions" in e.needs), None)
    if described is not None:  # the held-out images are training images of the target: its stage describes them
        target = run_config(experiment, described, experiment.target(shift), seed, f"{shift}/{described.name}-s{seed}")
        prepare_stages(experiment, described, target, progress)
        config = dataclasses.replace(config, store=target.store)
    progress(f"      label-free scores on the {len(images)} held-out images of {shift} (their labels unread)")
    return held_back_of(images, digest, config.run_dir, config, described is not None)


def choice_tag(choice: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" for k, v in choice.items())


def label_free_pick(scores: list[dict[str, Any]], score: str) -> dict[str, Any]:
    """The candidate with the best label-free `score` on the held-out images; ties go to the earlier candidate."""
    best = max(range(len(scores)), key=lambda i: (scores[i]["label_free"][score], -i))
    return scores[best]["choice"]


def run_summary(results: RunResults, run_dir: Path) -> dict[str, Any]:
    """Top-1 plus what the training log says about pseudo-labels, mixer weights, prototype drift and CoFT's two models
    (their agreement and rejections, label-free), averaged over its last fifth.

    `predictions/top_class_share` is the share of test predictions given to the most-predicted class (column sums
    of the confusion matrix: no label is read): self-training that collapses onto one class shows there.
    """
    summary: dict[str, Any] = {
        "top1": results["top1"],
        "steps": results["steps"],
        "seconds": results["timings"].get("total_s"),
    }
    confusion = results.get("test", {}).get("confusion")
    if confusion:
        predicted = [sum(column) for column in zip(*confusion)]
        summary["predictions/top_class_share"] = max(predicted) / max(1, sum(predicted))
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        train_records = [r for r in records if "loss" in r]
        tail = train_records[len(train_records) - max(1, len(train_records) // 5) :] if train_records else []
        keys = sorted({k for r in tail for k in r if k.startswith(SUMMARY_PREFIXES)})
        for key in keys:
            values = [r[key] for r in tail if isinstance(r.get(key), (int, float))]
            if values:
                summary[key] = sum(values) / len(values)
    return summary


def select(
    experiment: Experiment,
    entry: MethodEntry,
    shift: str,
    progress: Progress,
    prepare: Callable[[RunConfig], None] | None = None,
    archive: RunArchive | None = None,
    fresh: bool = False,
    held: Callable[[], HeldOutScoring] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid point with the best held-out top-1 (first seed); ties go to the earlier candidate.

    `prepare` runs before each candidate's run that trains (e.g. the description stage for its training images);
    `held` gives the held-out images each candidate is also scored on label-free (`held_out_scoring`).
    """
    candidates = entry.candidates()
    if len(candidates) == 1:
        return candidates[0], []
    scores = []
    for choice in candidates:
        name = f"select/{shift}/{entry.name}/{choice_tag(choice)}"
        progress(f"choose {entry.label} on held-out {shift} images: {choice}")
        config = run_config(experiment, entry, experiment.heldout(shift), experiment.seeds[0], name, choice)
        run = finished_run(config, prepare, archive, fresh, held() if held else None)
        scores.append({"choice": choice, "heldout_top1": run.results["top1"]})
        if held is not None:
            scores[-1]["label_free"] = run.results["label_free_scores"]
    best = max(range(len(scores)), key=lambda i: (scores[i]["heldout_top1"], -i))
    return scores[best]["choice"], scores


def check_stages(experiment: Experiment) -> None:
    """Refuse, before any work, an entry that needs a stage the experiments do not know."""
    for entry in experiment.methods:
        unknown = [stage for stage in entry.needs if stage not in STAGES]
        if unknown:
            raise LatteclipError(
                f"{experiment.source}: method entry '{entry.name}' needs stage(s) {', '.join(unknown)}; the demo runs: "
                f"{', '.join(STAGES)}"
            )
        if "descriptions" in entry.needs and not experiment.describe.get("lmm"):
            raise LatteclipError(
                f"{experiment.source}: '{entry.name}' needs descriptions: give the describer under 'describe:' (e.g. "
                "lmm: offline)"
            )


def prepare_stages(experiment: Experiment, entry: MethodEntry, config: RunConfig, progress: Progress = print) -> None:
    """Run the stages `entry` needs for the training images of `config` (only what is missing is done)."""
    if "descriptions" in entry.needs:
        describe_stage(config, resolve_settings(experiment.describe, {}), experiment.output / "describe", progress)


# What decides which images the description stage sees, with which model, and where it stores the texts.
DESCRIBE_RUN_KEYS = (
    "dataset",
    "root",
    "limit",
    "seed",
    "classnames",
    "templates",
    "domain",
    "split_file",
    "model",
    "pretrained",
    "device",
    "store",
    "workers",
    "eval_batch_size",
)


def settings_record(settings: DescribeSettings) -> dict[str, Any]:
    """The settings that differ from the defaults: what `latteclip describe --config FILE` needs to repeat them."""
    defaults = DescribeSettings()
    return {name: value for name, value in dataclasses.asdict(settings).items() if value != getattr(defaults, name)}


def describe_stage(
    config: RunConfig, settings: DescribeSettings, folder: Path, progress: Progress = print, prompts: str | None = None
) -> None:
    """The description stage (`engine.describing.describe_run`) over the training images `config` trains on,
    refused with a line saying how to continue when it did not finish (the demo, the benchmark and `adapt`).

    The stage's options are recorded in `folder` (what `latteclip describe --config FILE` would repeat by
    hand); the store skips images already described, so a repeated call only hashes the images.
    """
    record = {key: getattr(config, key) for key in DESCRIBE_RUN_KEYS}
    record["describe"] = settings_record(settings)
    path = folder / f"{config.dataset}-s{config.seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    summary, describer = describe_run(config, settings, prompts)
    progress(f"      descriptions by {describer}:")
    for line in summary.lines():
        progress(f"        {line}")
    if not summary.complete:
        raise LatteclipError(
            f"the description stage for {config.dataset} did not finish ({summary.lines()[-1]}); run again to "
            f"continue it (`latteclip describe --config {path}` does the same by hand)"
        )


@dataclass
class ExperimentRuns:
    """What an experiment measured: the pre-trainings' summaries, per-(entry, shift) run summaries and the choices
    made."""

    pretrained: dict[str, PretrainedWeights | None]  # "source", "describer"
    cells: Cells = field(default_factory=dict)
    choices: list[dict[str, Any]] = field(
        default_factory=list
    )  # per shift and searched entry: the scores and the choice
    run_dirs: dict[tuple[str, str], Path] = field(default_factory=dict)  # (entry, shift) -> the first seed's run folder
    label_free_score: str | None = None  # the score of the "(label-free choice)" rows
    label_free: Cells = field(default_factory=dict)  # (entry, shift) -> the runs of the label-free score's pick


def pretrain_stages(
    experiment: Experiment, stages: int, progress: Progress, started: float
) -> tuple[PretrainedWeights, PretrainedWeights | None]:
    """The first stages of `stages`: the source model, then the describer when the experiment has one (both cached)."""
    progress(
        f"[1/{stages}] pre-training {experiment.model} with labels on the clean source domain (cached after the "
        "first run)"
    )
    source = pretrain_source(experiment)
    how = "reused from the cache" if source.cached else "trained now"
    progress(
        f"      {how}: zero-shot top-1 {100 * source.summary['clean_test_top1']:.2f}% on the clean test set "
        f"({elapsed(started)})"
    )
    if not experiment.describer:
        return source, None
    progress(
        f"[2/{stages}] pre-training the describer {experiment.describer['model']} (the LMM's stand-in) with "
        "labels on the same clean source images (cached after the first run)"
    )
    describer = pretrain_describer(experiment)
    how = "reused from the cache" if describer.cached else "trained now"
    progress(
        f"      {how}: zero-shot top-1 {100 * describer.summary['clean_test_top1']:.2f}% on the clean test set "
        f"({elapsed(started)})"
    )
    return source, describer


def run_experiment(
    experiment: Experiment,
    choose: bool,
    progress: Progress = print,
    archive: RunArchive | None = None,
    fresh: frozenset[str] = frozenset(),
    label_free_score: str | None = None,
    candidate_runs: bool = False,
) -> ExperimentRuns:
    """Pre-train (cached), then every entry on every shift and seed: the one loop of the demo and the benchmark.

    `choose`: pick each entry's `search` options on held-out training images first (the benchmark), else
    run the configured options (the demo). Entries named in `fresh` train anew instead of being reused.
    With `label_free_score`, each candidate of a label-free entry is also scored without labels on the held-out
    images, and the candidate that score picks runs every seed as the entry's "(label-free choice)" row;
    `candidate_runs` (analysis) runs every such candidate on the target at the first seed, for the test top-1 of
    every possible pick.
    """
    check_stages(experiment)
    started = time.time()
    stage = 2 if experiment.describer else 1
    stages = stage + len(experiment.shifts) * len(experiment.methods) * len(experiment.seeds)
    source, describer = pretrain_stages(experiment, stages, progress, started)
    if archive is not None:
        for warning in archive.bind(experiment.weights):
            progress(f"warning: {warning}")
    runs = ExperimentRuns({"source": source, "describer": describer}, label_free_score=label_free_score)
    label_free = {entry.name for entry in experiment.label_free_trainers()}  # the oracle's choice reads labels anyway
    for shift in experiment.shifts:
        held = functools.cache(lambda shift=shift: held_out_scoring(experiment, shift, progress))
        for entry in experiment.methods:
            prepare = lambda config, entry=entry: prepare_stages(experiment, entry, config, progress)  # noqa: E731
            fresh_entry = entry.name in fresh
            choice: dict[str, Any] = {}
            scores: list[dict[str, Any]] = []
            if choose:
                scoring = held if label_free_score and entry.name in label_free else None
                choice, scores = select(experiment, entry, shift, progress, prepare, archive, fresh_entry, scoring)
            for seed in experiment.seeds:
                stage += 1
                progress(f"[{stage}/{stages}] {entry.label} on {experiment.target(shift)} (seed {seed})")
                run = target_run(experiment, entry, shift, seed, choice, prepare, archive, fresh_entry, tagged=False)
                runs.cells.setdefault((entry.name, shift), []).append({**run.summary, "seed": seed})
                runs.run_dirs.setdefault((entry.name, shift), experiment.output / shift / f"{entry.name}-s{seed}")
                kept = ", from the archive" if run.archived else ""
                progress(f"      top-1 {100 * run.results['top1']:.2f}% ({elapsed(started)}{kept})")
            if scores:
                runs.choices.append(
                    {"shift": shift, "entry": entry.name, "label": entry.label, "chosen": choice, "scores": scores}
                )
                if scoring:
                    how = (prepare, archive, fresh_entry)
                    other_picks(experiment, entry, shift, runs, how, candidate_runs, progress)
    return runs


def target_run(
    experiment: Experiment,
    entry: MethodEntry,
    shift: str,
    seed: int,
    choice: dict[str, Any],
    prepare: Callable[[RunConfig], None],
    archive: RunArchive | None,
    fresh: bool,
    tagged: bool,
) -> FinishedRun:
    """One run of `entry` on the target of `shift`; `tagged` runs (candidates other than the chosen one) are named by
    their options."""
    name = f"{shift}/{entry.name}-{choice_tag(choice)}-s{seed}" if tagged else f"{shift}/{entry.name}-s{seed}"
    config = run_config(experiment, entry, experiment.target(shift), seed, name, choice)
    return finished_run(config, prepare, archive, fresh)


def other_picks(
    experiment: Experiment,
    entry: MethodEntry,
    shift: str,
    runs: ExperimentRuns,
    how: tuple[Callable[[RunConfig], None], RunArchive | None, bool],
    candidate_runs: bool,
    progress: Progress,
) -> None:
    """The label-free pick's runs on every seed (the chosen candidate's are the entry's own), and with
    `candidate_runs` every candidate's first-seed test top-1 (`test_top1` of its record in the choice)."""
    record = runs.choices[-1]
    chosen, own = record["chosen"], runs.cells[(entry.name, shift)]
    if runs.label_free_score:
        pick = label_free_pick(record["scores"], runs.label_free_score)
        record["label_free_pick"] = pick
        progress(f"      {entry.label}, label-free choice by {runs.label_free_score}: {pick}")
        runs.label_free[(entry.name, shift)] = (
            own
            if pick == chosen
            else [
                {**target_run(experiment, entry, shift, seed, pick, *how, tagged=True).summary, "seed": seed}
                for seed in experiment.seeds
            ]
        )
    if candidate_runs:
        seed = experiment.seeds[0]
        for candidate in record["scores"]:
            if candidate["choice"] == chosen:
                candidate["test_top1"] = own[0]["top1"]
                continue
            progress(
                f"      ANALYSIS: {entry.label} with {candidate['choice']} on {experiment.target(shift)} (seed {seed})"
            )
            run = target_run(experiment, entry, shift, seed, candidate["choice"], *how, tagged=True)
            candidate["test_top1"] = run.results["top1"]
