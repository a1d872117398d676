"""An experiment over datasets, end to end: checks before any work, the description stages, the runs as jobs.

The description stages run here, one per (dataset, group size, share of the training images, seed), before the
jobs that read them, so that concurrent jobs never write one store. The runs then go to `launch.py` (submitit:
local devices or a Slurm array); runs already done are not submitted again, and a failed one is submitted again by
the next `run`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import open_clip

from latteclip.config import RunConfig
from latteclip.data import build_dataset
from latteclip.data.coop import load_spec, read_split_file, spec_names
from latteclip.data.subsets import share_count
from latteclip.describe.prompts import load_prompts
from latteclip.describe.settings import resolve_settings
from latteclip.engine.choice import first_best
from latteclip.engine.results import read_results
from latteclip.engine.session import dataset_options
from latteclip.errors import LatteclipError
from latteclip.experiments.archive import RunArchive
from latteclip.experiments.cost import run_steps
from latteclip.experiments.jobs import RunState, run_job, run_state
from latteclip.experiments.launch import Job, LaunchSettings, Outcome, launch
from latteclip.experiments.plan import Plan, PlannedRun
from latteclip.experiments.runner import RunHow, cached_weights, candidate_requests, describe_stage, run_config
from latteclip.experiments.spec import Experiment, MethodEntry
from latteclip.experiments.tables import Cells

Progress = Callable[[str], None]
PAPER_SECONDS_PER_DESCRIPTION = 1.2  # the paper's LMM cost per description (LLaVA on one GPU)


def check_plan(plan: Plan) -> None:
    """Every dataset root, model name and LMM server, before any work: one line each that says what to do."""
    for dataset in plan.datasets:
        config = plan.run_config(dataset, plan.entries[0], plan.seeds[0]) if plan.entries else None
        if config is None:
            break
        if not config.root:
            raise LatteclipError(
                f"{plan.source}: no data root for {dataset}: pass --data-root DIR (the folder "
                f"`latteclip data download {dataset} --root DIR` fills)"
            )
        try:
            build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
        except LatteclipError as err:
            raise LatteclipError(
                f"dataset {dataset} is not under {config.root} ({err}): run `latteclip data download "
                f"{dataset} --root {config.root}`, or leave it out with --datasets"
            ) from err
    for model in sorted({run.config.model for run in plan.runs()}):
        if not model.startswith("hf-hub:") and model not in _model_names():
            raise LatteclipError(
                f"unknown model '{model}' in {plan.source}: an OpenCLIP name (e.g. ViT-B-32), an "
                "hf-hub: id, or latte-tiny"
            )
    if any(_reads_lmm(entry) for entry in plan.entries):
        settings = resolve_settings(plan.describe, {})
        if not settings.lmm:
            raise LatteclipError(
                f"{plan.source}: entries read descriptions: choose a describer with --lmm "
                "(openai --lmm-url URL, transformers, offline, batch)"
            )
        for url in settings.lmm_url if settings.lmm == "openai" else []:
            _check_server(url)


def _model_names() -> set[str]:
    from latteclip.models.loader import register_project_configs

    register_project_configs()
    return set(open_clip.list_models())


def _check_server(url: str) -> None:
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/models", timeout=10).raise_for_status()
    except httpx.HTTPError as err:
        raise LatteclipError(f"LMM server {url} does not answer ({err}): start it, or give another --lmm-url") from err


def _reads_lmm(entry) -> bool:
    return "descriptions" in entry.needs or "class_texts" in entry.needs or entry.kind == "lmm_zeroshot"


StageKey = tuple[str, int, float, int]  # (dataset, group size, share of the training images, seed)


def description_stages(plan: Plan) -> dict[StageKey, PlannedRun]:
    """Each description stage -> the first run that reads its descriptions."""
    stages: dict[StageKey, PlannedRun] = {}
    for run in plan.runs():
        if "descriptions" in run.entry.needs:
            stages.setdefault(_stage_key(plan, run), run)
    return stages


def describe_all(plan: Plan, progress: Progress) -> None:
    """Each description stage once (the store skips what it holds), before the runs that need it."""
    stages = description_stages(plan)
    for index, (key, run) in enumerate(stages.items(), 1):
        if all(run_state(other.config).state == "done" for other in plan.runs() if _reads_stage(plan, other, key)):
            continue
        dataset, size, fraction, seed = key
        share = f", {100 * fraction:g}% of the training images" if fraction != 1.0 else ""
        progress(f"[descriptions {index}/{len(stages)}] {dataset}, groups of {size}{share}, seed {seed}")
        settings = resolve_settings(plan.describe_options(run.entry), {})
        folder = plan.output / "describe" / (f"g{size}" + (f"-f{fraction:g}" if fraction != 1.0 else ""))
        describe_stage(run.config, settings, folder, progress)
    for dataset, run in class_text_stages(plan).items():
        readers = [other for other in plan.runs() if other.dataset == dataset and "class_texts" in other.entry.needs]
        if all(run_state(other.config).state == "done" for other in readers):
            continue
        progress(f"[class descriptions] {dataset}: the LLM describes each class name")
        settings = resolve_settings({**plan.describe_options(run.entry), "kinds": ["classes"]}, {})
        describe_stage(run.config, settings, plan.output / "describe" / "classes", progress)


def class_text_stages(plan: Plan) -> dict[str, PlannedRun]:
    """Dataset -> the first run that reads the LLM's class descriptions (`needs: [class_texts]`): one stage each."""
    stages: dict[str, PlannedRun] = {}
    for run in plan.runs():
        if "class_texts" in run.entry.needs:
            stages.setdefault(run.dataset, run)
    return stages


def _reads_stage(plan: Plan, run: PlannedRun, key: StageKey) -> bool:
    return "descriptions" in run.entry.needs and _stage_key(plan, run) == key


def _stage_key(plan: Plan, run: PlannedRun) -> StageKey:
    size = int(plan.describe_options(run.entry).get("group_size", 4))
    return run.dataset, size, run.config.train_fraction, run.seed


def job_of(plan: Plan, run: PlannedRun) -> Job:
    config = dataclasses.replace(run.config, resume=False, overwrite=False)
    describe = plan.describe_options(run.entry) if run.entry.kind == "lmm_zeroshot" else None
    return Job(run.name, {"config": config.to_dict(), "describe": describe})


def run_plan(plan: Plan, settings: LaunchSettings, progress: Progress = print) -> list[Outcome]:
    """Check, describe, then launch every run not done yet; the outcomes of the launched ones."""
    check_plan(plan)
    describe_all(plan, progress)
    todo = [run for run in plan.runs() if run_state(run.config).state != "done"]
    done = len(plan.runs()) - len(todo)
    progress(f"{len(plan.runs())} runs: {done} done before, {len(todo)} to run ({settings.launcher} launcher)")
    return launch([job_of(plan, run) for run in todo], run_job, settings, progress)


@dataclass(frozen=True)
class PlanSize:
    runs: int
    description_stages: int
    descriptions: int  # of the datasets whose training split could be read
    unknown: list[str]  # datasets whose training split is neither under --data-root nor in the package
    train_steps: int = 0  # the training steps of the runs of the other datasets, as their schedules plan them

    @property
    def lmm_hours(self) -> float:
        return self.descriptions * PAPER_SECONDS_PER_DESCRIPTION / 3600


def plan_size(plan: Plan) -> PlanSize:
    """Runs, description stages and LMM descriptions (one per image and store, one per group, one per class name and
    question of CoFT+'s class descriptions) at 1.2 s each, and the training steps of every run."""
    stages = description_stages(plan)
    settings = resolve_settings(plan.describe, {})
    count, unknown, stores = 0, [], {}
    for dataset, size, fraction, _ in stages:
        split = _train_split(plan, dataset)
        if split is None:
            unknown += [dataset] if dataset not in unknown else []
            continue
        count += -(-share_count(split[0], fraction) // size) * ("group" in settings.kinds)  # groups: per stage
        # a store (one per dataset and group size) describes each image once, whatever the seed and share: the
        # shares are nested, so its largest share's images
        stores[(dataset, size)] = max(stores.get((dataset, size), (0.0, 0)), (fraction, split[0]))
    count += sum(share_count(images, share) for share, images in stores.values()) * ("image" in settings.kinds)
    questions = len(load_prompts(settings.prompts).classes)
    for dataset in class_text_stages(plan):
        split = _train_split(plan, dataset)
        count += split[1] * questions if split else 0
        unknown += [dataset] if split is None and dataset not in unknown else []
    steps = 0
    trained = {dataset: _train_split(plan, dataset, with_val=True) for dataset in plan.datasets}
    for run in plan.runs():
        if trained[run.dataset] is None:
            unknown += [run.dataset] if run.dataset not in unknown else []
        else:
            steps += run_steps(run.config, trained[run.dataset][0])
    return PlanSize(len(plan.runs()), len(stages) + len(class_text_stages(plan)), count, unknown, steps)


def _train_split(plan: Plan, dataset: str, with_val: bool = False) -> tuple[int, int] | None:
    """(training images, classes) of `dataset`: from its data when present (CoOp train + val, what training reads),
    else from the CoOp split file the package holds (its train part; `with_val`: train + val)."""
    # the whole training split, whatever share the first entry trains on (plan_size takes the shares)
    config = dataclasses.replace(plan.run_config(dataset, plan.entries[0], plan.seeds[0]), train_fraction=1.0)
    if config.root:
        try:
            train = build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
            return len(train.samples), train.info.num_classes
        except LatteclipError:
            pass
    if config.dataset not in spec_names():
        return None
    bundled = resources.files("latteclip.data").joinpath("splits", f"{load_spec(config.dataset).get('split_file')}.gz")
    if not bundled.is_file():
        return None
    split = read_split_file(Path(str(bundled)))
    train = split["train"]
    return len(train) + (len(split["val"]) if with_val else 0), len({entry[1] for entry in train})


def plan_states(plan: Plan) -> list[tuple[PlannedRun, RunState]]:
    return [(run, run_state(run.config)) for run in plan.runs()]


def launch_settings(output: Path, **options: Any) -> LaunchSettings:
    """The launcher's settings; its files under OUTPUT/jobs."""
    given = {k: v for k, v in options.items() if v is not None}
    return LaunchSettings(folder=Path(output) / "jobs", **given)


def shift_states(experiment: Experiment, archive: RunArchive | None = None) -> tuple[list[tuple[str, RunState]], Cells]:
    """An experiment over shifted domains without training anything: each held-out candidate's state, then each target
    run's, with the options its finished candidates choose (a run whose choice is not made yet waits for it); and the
    cells of the finished target runs, for its table. Runs in `archive` count as done."""
    missing = cached_weights(experiment)
    if missing:
        return [(f"pretrain/{name}", RunState("missing", "pre-trained by `experiment run`")) for name in missing], {}
    if archive is not None:
        archive.bind(experiment.weights)
    states: list[tuple[str, RunState]] = []
    cells: Cells = {}
    for shift in experiment.shifts:
        for entry in experiment.methods:
            choice = _held_out_choice(experiment, entry, shift, archive, states)
            for seed in experiment.seeds:
                name = f"{shift}/{entry.name}-s{seed}"
                if choice is None:
                    states.append((name, RunState("missing", "waits for the held-out choice")))
                    continue
                config = run_config(experiment, entry, experiment.target(shift), seed, name, choice)
                state, results = _state_and_results(config, archive)
                states.append((name, state))
                if results is not None:
                    cells.setdefault((entry.name, shift), []).append({"top1": results["top1"], "seed": seed})
    return states, cells


def _held_out_choice(
    experiment: Experiment, entry: MethodEntry, shift: str, archive: RunArchive | None, states: list
) -> dict[str, Any] | None:
    """The options the held-out candidates choose (the configured ones without a search), None until all finished."""
    candidates = entry.candidates()
    if not experiment.choose or len(candidates) == 1:
        return candidates[0]
    tops = []
    for request in candidate_requests(experiment, entry, shift, RunHow(), None):
        state, results = _state_and_results(request.config, archive)
        states.append((request.config.name, state))
        tops.append(results["top1"] if results is not None else None)
    if any(top is None for top in tops):
        return None
    return candidates[first_best(tops)]


def _state_and_results(config: RunConfig, archive: RunArchive | None) -> tuple[RunState, dict[str, Any] | None]:
    kept = archive.get(config) if archive is not None else None
    if kept is not None:
        return RunState("done", "from the archive"), kept["results"]
    state = run_state(config)
    return state, read_results(config.run_dir) if state.state == "done" else None
