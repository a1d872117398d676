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
from latteclip.data.shifts import UNSHIFTED
from latteclip.describe.clip_vocab import describer_model_id, read_vocabulary
from latteclip.describe.settings import DescribeSettings, resolve_settings
from latteclip.engine.choice import HeldBack, first_best, held_back_of, score_run
from latteclip.engine.describing import describe_run
from latteclip.engine.pretraining import PretrainedWeights, pretrain_key, pretrained_weights, weights_path
from latteclip.engine.results import RunResults, read_results
from latteclip.engine.session import dataset_options
from latteclip.engine.validation import with_combined
from latteclip.errors import LatteclipError
from latteclip.experiments.archive import RunArchive
from latteclip.experiments.jobs import computed_here_alike, run_job, run_or_reuse
from latteclip.experiments.launch import Job, LaunchSettings, launch
from latteclip.experiments.machine import elapsed
from latteclip.experiments.spec import FILE_OPTIONS, Experiment, MethodEntry, deep_merge
from latteclip.experiments.tables import Cells

Progress = Callable[[str], None]
SUMMARY_PREFIXES = ("analysis/", "mixer/", "prototypes/", "coft/")  # training-log metrics a run's summary averages
STAGES = ("descriptions",)  # what an entry may list under `needs`


def pretrain_configs(experiment: Experiment) -> dict[str, RunConfig]:
    """The pre-trainings: the source model, and the describer (when the experiment has one) from the source's options
    with its section's own on top."""
    source = {"method": "pretrain", "model": experiment.model, "root": experiment.root, **experiment.pretrain}
    configs = {"source": resolve_config(source)}
    if experiment.describer:
        describer = {**source, "model": experiment.describer["model"]}
        configs["describer"] = resolve_config(deep_merge(describer, experiment.describer.get("pretrain") or {}))
    return configs


def use_weights(experiment: Experiment, name: str, path: Path) -> None:
    """Runs start from these weights; the describer's also become the description stage's describer."""
    experiment.weights[name] = path
    if name == "describer":
        model = experiment.describer["model"]
        experiment.describe = {**experiment.describe, "describer_model": model, "describer_pretrained": str(path)}


def cached_weights(experiment: Experiment) -> list[str]:
    """Point the experiment at the pre-trained weights already in the cache, training nothing; the names of those not
    there yet."""
    missing = []
    for name, config in pretrain_configs(experiment).items():
        path = weights_path(config, pretrain_key(config))
        if path.is_file():
            use_weights(experiment, name, path)
        else:
            missing.append(name)
    return missing


def pretrain_source(experiment: Experiment) -> PretrainedWeights:
    """The source model: the experiment's pre-training, from the cache when it was done before."""
    source = pretrained_weights(pretrain_configs(experiment)["source"])
    use_weights(experiment, "source", source.path)
    return source


def pretrain_describer(experiment: Experiment) -> PretrainedWeights | None:
    """The describer's model (None without a `describer` section), pre-trained or from the cache.

    It starts from the source's pre-training options with the section's own on top, and becomes the
    description stage's `describer_model` / `describer_pretrained`.
    """
    if not experiment.describer:
        return None
    describer = pretrained_weights(pretrain_configs(experiment)["describer"])
    use_weights(experiment, "describer", describer.path)
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
    for key in FILE_OPTIONS:  # files named in an experiment are relative to the experiment file
        if options.get(key) and not Path(options[key]).is_absolute():
            options = {**options, key: str((Path(experiment.source).parent / options[key]).resolve())}
            values["method_options"] = options
    if "descriptions" in entry.needs and "described_by" not in (values.get("method_options") or {}):
        described_by = offline_describer_name(experiment.describe, dataset, values["model"], values["pretrained"])
        if described_by:
            values["method_options"] = {**(values.get("method_options") or {}), "described_by": described_by}
    return resolve_config(values)


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
    kept = archived_run(config, archive, fresh, held)
    if kept is not None:
        return kept
    return recorded_run(config, archive, held, run_or_reuse(config, prepare, fresh))


def recorded_run(
    config: RunConfig, archive: RunArchive | None, held: HeldOutScoring | None, results: RunResults | None = None
) -> FinishedRun:
    """A finished run's results (read from its folder unless given), scored on `held` when asked (its final model is
    there: no training), its summary, recorded in the archive."""
    results = results if results is not None else read_results(config.run_dir)
    if not scored_on(results, held):
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


@dataclass(frozen=True)
class RunRequest:
    """One run an experiment needs: its configuration, the stage to run before it trains, whether to train it anew,
    the held-out images to score it on, and the line that names it in the progress."""

    config: RunConfig
    title: str
    prepare: Callable[[RunConfig], None] | None = None
    fresh: bool = False
    held: HeldOutScoring | None = None


def finished_runs(
    requests: list[RunRequest], archive: RunArchive | None, launcher: LaunchSettings | None, progress: Progress
) -> list[FinishedRun]:
    """Every request's finished run: from the archive, else run here one after the other (`launcher` None), or as
    jobs of the launcher the paper's experiment uses (local devices at once, or a Slurm array: `jobs.run_job`), their
    stages run here first, as `orchestrate.describe_all` does."""
    if launcher is None:
        done = []
        for request in requests:
            progress(request.title)
            done.append(finished_run(request.config, request.prepare, archive, request.fresh, request.held))
            progress(f"      {measured(done[-1])}")
        return done
    kept = {i: archived_run(r.config, archive, r.fresh, r.held) for i, r in enumerate(requests)}
    todo = [i for i, run in kept.items() if run is None]
    for i in todo:
        if requests[i].prepare is not None:
            requests[i].prepare(requests[i].config)
    jobs = [Job(requests[i].config.name or str(i), job_payload(requests[i])) for i in todo]
    failed = [outcome for outcome in launch(jobs, run_job, launcher, progress) if not outcome.ok]
    if failed:
        lines = "; ".join(f"{outcome.name}: {outcome.message}" for outcome in failed)
        raise LatteclipError(f"{len(failed)} of {len(jobs)} runs failed ({lines}): run again to retry them")
    for i in todo:  # what the jobs left in their run folders (wherever they ran), scored and archived here
        kept[i] = recorded_run(requests[i].config, archive, requests[i].held)
    for request, run in zip(requests, kept.values()):
        progress(f"{request.title}: {measured(run)}")
    return list(kept.values())


def measured(run: FinishedRun) -> str:
    return f"top-1 {100 * run.results['top1']:.2f}%" + (" (from the archive)" if run.archived else "")


def archived_run(
    config: RunConfig, archive: RunArchive | None, fresh: bool = False, held: HeldOutScoring | None = None
) -> FinishedRun | None:
    """The archive's entry for `config` when it stands for the run here: same configuration, computed alike, and
    scored on `held` (scoring needs the model, which only a run folder keeps); None to run it."""
    if archive is None or fresh:
        return None
    kept = archive.get(config)
    if kept is None or not computed_here_alike(kept["results"], config) or not scored_on(kept["results"], held):
        return None
    return FinishedRun(kept["results"], kept["summary"], archived=True)


def job_payload(request: RunRequest) -> dict[str, Any]:
    config = dataclasses.replace(request.config, resume=False, overwrite=False)
    return {"config": config.to_dict(), "fresh": request.fresh}


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
    described = describing_entry(experiment)
    if described is not None:  # the held-out images are training images of the target: its stage describes them
        target = run_config(experiment, described, experiment.target(shift), seed, f"{shift}/{described.name}-s{seed}")
        prepare_stages(experiment, described, target, progress)
        config = dataclasses.replace(config, store=target.store)
    progress(f"      label-free scores on the {len(images)} held-out images of {shift} (their labels unread)")
    return held_back_of(images, digest, config.run_dir, config, described is not None)


def describing_entry(experiment: Experiment) -> MethodEntry | None:
    """The entry whose description stage describes each target's training images (None: nothing is described), and
    so the held-out images the label-free scores compare with the describer."""
    return next((e for e in experiment.methods if "descriptions" in e.needs), None)


def choice_tag(choice: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" for k, v in choice.items())


def label_free_pick(scores: list[dict[str, Any]], score: str) -> dict[str, Any]:
    """The candidate with the best label-free `score` on the held-out images; ties go to the earlier candidate."""
    return scores[first_best([s["label_free"][score] for s in scores])]["choice"]


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


def candidate_requests(
    experiment: Experiment, entry: MethodEntry, shift: str, how: RunHow, held: HeldOutScoring | None
) -> list[RunRequest]:
    """The held-out runs that choose `entry`'s `search` options on `shift` (first seed), scored label-free on `held`."""
    requests = []
    for choice in entry.candidates():
        name = f"select/{shift}/{entry.name}/{choice_tag(choice)}"
        config = run_config(experiment, entry, experiment.heldout(shift), experiment.seeds[0], name, choice)
        title = f"choose {entry.label} on held-out {shift} images: {choice}"
        requests.append(RunRequest(config, title, how.prepare, how.fresh, held))
    return requests


def chosen(candidates: list[dict[str, Any]], runs: list[FinishedRun], scored: bool) -> tuple[dict, list[dict]]:
    """The candidate with the best held-out top-1 (ties go to the earlier one), and every candidate's record."""
    scores = [{"choice": c, "heldout_top1": run.results["top1"]} for c, run in zip(candidates, runs)]
    for record, run in zip(scores, runs):
        if scored:
            record["label_free"] = with_combined(run.results["label_free_scores"])
    return scores[first_best([s["heldout_top1"] for s in scores])]["choice"], scores


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
    "train_fraction",
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


@dataclass(frozen=True)
class RunHow:
    """How an entry's runs are made: the stages before training, the archive, whether to train anew."""

    prepare: Callable[[RunConfig], None] | None = None
    archive: RunArchive | None = None
    fresh: bool = False


def run_experiment(
    experiment: Experiment,
    choose: bool,
    progress: Progress = print,
    archive: RunArchive | None = None,
    fresh: frozenset[str] = frozenset(),
    label_free_score: str | None = None,
    candidate_runs: bool = False,
    launcher: LaunchSettings | None = None,
) -> ExperimentRuns:
    """Pre-train (cached), choose on held-out images, then every entry on every shift and seed: the one loop of the
    demo and the benchmark, whose runs go one after the other here (`launcher` None) or, as the paper's do, to the
    launcher as jobs (every held-out candidate at once, then every target run at once).

    `choose`: pick each entry's `search` options on held-out training images first (the benchmark), else
    run the configured options (the demo). Entries named in `fresh` train anew instead of being reused.
    With `label_free_score`, each candidate of a label-free entry is also scored without labels on the held-out
    images, and the candidate that score picks runs every seed as the entry's "(label-free choice)" row;
    `candidate_runs` (analysis) runs every such candidate on the target at the first seed, for the test top-1 of
    every possible pick (shifted domains only).
    """
    check_stages(experiment)
    started = time.time()
    source, describer = pretrain_stages(experiment, 2 if experiment.describer else 1, progress, started)
    if archive is not None:
        for warning in archive.bind(experiment.weights):
            progress(f"warning: {warning}")
    runs = ExperimentRuns({"source": source, "describer": describer}, label_free_score=label_free_score)
    label_free = {entry.name for entry in experiment.label_free_trainers()}  # the oracle's choice reads labels anyway

    def how(entry: MethodEntry) -> RunHow:
        prepare = lambda config: prepare_stages(experiment, entry, config, progress)  # noqa: E731
        return RunHow(prepare, archive, entry.name in fresh)

    choices = (
        choose_all(experiment, how, label_free if label_free_score else set(), archive, launcher, progress)
        if choose
        else {}
    )
    requests, places = target_requests(experiment, how, choices)
    picked = []
    for (name, shift), (choice, scores) in choices.items():
        entry = by_name(experiment, name)
        if scores:
            runs.choices.append(
                {"shift": shift, "entry": name, "label": entry.label, "chosen": choice, "scores": scores}
            )
        if scores and name in label_free and label_free_score:
            more, where = other_requests(
                experiment, entry, runs.choices[-1], how(entry), label_free_score, candidate_runs
            )
            requests, places, picked = requests + more, places + where, [*picked, runs.choices[-1]]
    for place, run in zip(places, finished_runs(requests, archive, launcher, progress)):
        place(runs, run)
    for record in picked:
        place_own(runs, record, candidate_runs, experiment.seeds[0])
    progress(f"every run finished ({elapsed(started)})")
    return runs


def by_name(experiment: Experiment, name: str) -> MethodEntry:
    return next(entry for entry in experiment.methods if entry.name == name)


def choose_all(
    experiment: Experiment,
    how: Callable[[MethodEntry], RunHow],
    scored: set[str],
    archive: RunArchive | None,
    launcher: LaunchSettings | None,
    progress: Progress,
) -> dict[tuple[str, str], tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(entry, shift) -> the chosen options and every candidate's record: all held-out candidates of every shift in
    one batch; the entries in `scored` are also scored label-free (`held_out_scoring`, built once per shift)."""
    held = {
        shift: functools.cache(lambda shift=shift: held_out_scoring(experiment, shift, progress))
        for shift in experiment.shifts
    }
    batches = {}
    for shift in experiment.shifts:
        for entry in experiment.methods:
            if len(entry.candidates()) > 1:
                scoring = held[shift]() if entry.name in scored else None
                batches[(entry.name, shift)] = candidate_requests(experiment, entry, shift, how(entry), scoring)
    flat = [request for batch in batches.values() for request in batch]
    done = iter(finished_runs(flat, archive, launcher, progress) if flat else [])
    choices = {}
    for (name, shift), batch in batches.items():
        entry = by_name(experiment, name)
        choices[(name, shift)] = chosen(entry.candidates(), [next(done) for _ in batch], name in scored)
        progress(f"      {entry.label} on {shift}: chose {choices[(name, shift)][0]} by held-out top-1")
    return choices


Place = Callable[["ExperimentRuns", FinishedRun], None]


def target_requests(
    experiment: Experiment, how: Callable[[MethodEntry], RunHow], choices: dict
) -> tuple[list[RunRequest], list[Place]]:
    """Every (shift, entry, seed) run with the entry's chosen options, and where each result goes."""
    requests, places = [], []
    stages = len(experiment.shifts) * len(experiment.methods) * len(experiment.seeds)
    for shift in experiment.shifts:
        for entry in experiment.methods:
            choice = choices.get((entry.name, shift), ({}, []))[0]
            for seed in experiment.seeds:
                config = run_config(
                    experiment, entry, experiment.target(shift), seed, f"{shift}/{entry.name}-s{seed}", choice
                )
                title = f"[{len(requests) + 1}/{stages}] {entry.label} on {experiment.target(shift)} (seed {seed})"
                requests.append(RunRequest(config, title, how(entry).prepare, how(entry).fresh))
                places.append(functools.partial(place_cell, entry.name, shift, seed, config.run_dir))
    return requests, places


def place_cell(entry: str, shift: str, seed: int, run_dir: Path, runs: ExperimentRuns, run: FinishedRun) -> None:
    runs.cells.setdefault((entry, shift), []).append({**run.summary, "seed": seed})
    runs.run_dirs.setdefault((entry, shift), run_dir)


def other_requests(
    experiment: Experiment,
    entry: MethodEntry,
    record: dict[str, Any],
    how: RunHow,
    score: str,
    candidate_runs: bool,
) -> tuple[list[RunRequest], list[Place]]:
    """The label-free pick's runs on every seed, and with `candidate_runs` every candidate's first-seed run (its
    `test_top1` in the choice's record); the chosen candidate's runs are the entry's own cells (`place_own`)."""
    pick = record["label_free_pick"] = label_free_pick(record["scores"], score)
    first, shift = experiment.seeds[0], record["shift"]
    wanted = {(choice_tag(pick), seed): (pick, seed) for seed in experiment.seeds}
    if analysed(record, candidate_runs):
        for candidate in record["scores"]:
            wanted.setdefault((choice_tag(candidate["choice"]), first), (candidate["choice"], first))
    requests, places = [], []
    for (tag, seed), (choice, _) in wanted.items():
        if choice == record["chosen"]:
            continue
        config = run_config(
            experiment, entry, experiment.target(shift), seed, f"{shift}/{entry.name}-{tag}-s{seed}", choice
        )
        title = f"      {entry.label} with {choice} on {experiment.target(shift)} (seed {seed})"
        requests.append(RunRequest(config, title, how.prepare, how.fresh))
        places.append(functools.partial(place_other, record, choice, seed, choice == pick, seed == first))
    return requests, places


def place_other(
    record: dict[str, Any], choice: dict, seed: int, picked: bool, first: bool, runs: ExperimentRuns, run: FinishedRun
) -> None:
    if picked:
        runs.label_free.setdefault((record["entry"], record["shift"]), []).append({**run.summary, "seed": seed})
    for candidate in record["scores"]:
        if first and candidate["choice"] == choice:
            candidate["test_top1"] = run.results["top1"]


def analysed(record: dict[str, Any], candidate_runs: bool) -> bool:
    """Whether a choice's candidates all run on the target: the analysis measures the choices on shifted domains only
    (on the unshifted one there is no shift to adapt to)."""
    return candidate_runs and record["shift"] != UNSHIFTED


def place_own(runs: ExperimentRuns, record: dict[str, Any], candidate_runs: bool, first: int) -> None:
    """Where the label-free pick, or a candidate run for the analysis, is the chosen candidate: the entry's own runs."""
    own = runs.cells[(record["entry"], record["shift"])]
    if record["label_free_pick"] == record["chosen"]:
        runs.label_free[(record["entry"], record["shift"])] = own
    for candidate in record["scores"]:
        if analysed(record, candidate_runs) and candidate["choice"] == record["chosen"]:
            candidate["test_top1"] = next(r["top1"] for r in own if r["seed"] == first)
