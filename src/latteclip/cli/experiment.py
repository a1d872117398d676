"""`experiment run|status|tables FILE|NAME`: an experiment over datasets (the paper's: `paper`) as resumable jobs;
the work is the api's (experiment_plan, run_experiment_plan, experiment_status, experiment_tables, run_experiment)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from latteclip.cli import (
    add_describe_arguments,
    add_option_arguments,
    command,
    run_values,
)
from latteclip.config import comma_list

# run options the command line may set for every run of the experiment
RUN_OVERRIDES = (
    "model",
    "pretrained",
    "device",
    "workers",
    "max_steps",
    "epochs",
    "batch_size",
    "lr",
    "limit",
    "train_fraction",
    "warmup_steps",
    "eval_batch_size",
    "precision",
    "eval_every",
    "checkpoint_every",
    "log_every",
)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", metavar="FILE|NAME", help="an experiment file, or paper, domain-shift, demo")
    group = parser.add_argument_group("selection")
    group.add_argument("--datasets", help="comma-separated datasets of the file to keep, e.g. eurosat,dtd")
    group.add_argument("--entries", help="comma-separated entries to keep, e.g. zeroshot,latteclip")
    group.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the file's)")
    group.add_argument("--tables", help="comma-separated tables whose entries to keep, e.g. 1,2")
    group.add_argument("--data-root", dest="data_root", help="folder holding the datasets (`latteclip data download`)")
    group.add_argument("--output", help="folder of the run folders (default: the file's)")
    add_option_arguments(parser.add_argument_group("run options for every run"), *RUN_OVERRIDES)


def _add_launcher(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("launcher")
    group.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        help="local: this machine, one run per device at once; slurm: one Slurm job per run, as a job array (default: "
        "local; an experiment over shifted domains runs in this process unless --launcher or --devices is given)",
    )
    group.add_argument("--devices", help="local: comma-separated devices, one run at once on each (cuda:0,cuda:1)")
    group.add_argument("--slurm-partition", dest="partition", help="slurm: --partition")
    group.add_argument("--slurm-time", dest="timeout_min", type=int, help="slurm: minutes a job may run")
    group.add_argument("--slurm-gpus", dest="gpus_per_job", type=int, help="slurm: GPUs per job")
    group.add_argument("--slurm-cpus", dest="cpus_per_job", type=int, help="slurm: CPUs per job")
    group.add_argument("--slurm-array-parallelism", dest="array_parallelism", type=int, help="slurm: jobs at once")
    group.add_argument(
        "--slurm-sbatch",
        dest="sbatch",
        action="append",
        metavar="KEY=VALUE",
        help="slurm: a further sbatch option, e.g. account=proj (repeatable)",
    )


@command("experiment", "an experiment over datasets as resumable jobs: `run`, `status`, `tables` (NAME: paper, ...)")
def _experiment_parser(parser: argparse.ArgumentParser) -> None:
    from latteclip.cli import DefaultsHelpFormatter
    from latteclip.describe.settings import LMM

    actions = parser.add_subparsers(dest="action", required=True)
    run = actions.add_parser(
        "run",
        formatter_class=DefaultsHelpFormatter,
        help="check, describe, then every run "
        "not done yet (finished runs reused, interrupted ones resumed, failed ones retried)",
    )
    _add_selection(run)
    add_describe_arguments(run, LMM)
    _add_launcher(run)
    status = actions.add_parser(
        "status",
        formatter_class=DefaultsHelpFormatter,
        help="each run done / running / failed / missing, what remains, and the plan's size",
    )
    _add_selection(status)
    add_describe_arguments(status, LMM)  # the describer decides which description set a run reads: part of its config
    cost = status.add_argument_group("GPU hours (training steps x the seconds of one step, measured on a GPU)")
    cost.add_argument("--step-seconds", type=float, metavar="S", help="seconds of one training step on your GPU")
    cost.add_argument(
        "--step-benchmark",
        metavar="FILE.json",
        help="the JSON `benchmarks/train_step.py --device cuda --json FILE` wrote (its LatteCLIP step)",
    )
    tables = actions.add_parser(
        "tables",
        formatter_class=DefaultsHelpFormatter,
        help="our cells beside the paper's from finished runs (trains nothing)",
    )
    _add_selection(tables)
    add_describe_arguments(tables, LMM)
    tables.add_argument("--out", metavar="PAGE.md", help="write the page here (default: print it)")
    tables.add_argument("--overwrite", action="store_true", help="replace the --out page when it exists")


def load_from_args(args: argparse.Namespace):
    """The experiment file narrowed by the flags; describe (LMM) flags given override the file's `describe:`."""
    from latteclip import api
    from latteclip.describe.settings import DescribeSettings

    describe = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(DescribeSettings)
        if getattr(args, f.name, None) not in (None, [])
    }
    return api.experiment_plan(
        args.experiment,
        datasets=_listed(args.datasets),
        tables=_listed(args.tables),
        data_root=args.data_root,
        describe=describe,
        **_selection(args),
    )


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    """What every kind of experiment takes from the flags: entries, seeds, output folder and run overrides."""
    return {
        "entries": _listed(args.entries),
        "seeds": [int(s) for s in comma_list(args.seeds)] if args.seeds else None,
        "output": args.output,
        "run": {k: v for k, v in run_values(args).items() if k in RUN_OVERRIDES},
    }


def _listed(text: str | None) -> list[str] | None:
    return comma_list(text) if text else None


@_experiment_parser
def run_experiment_command(args: argparse.Namespace) -> int:
    return {"run": _run, "status": _status, "tables": _tables}[args.action](args)


def _shift_experiment(args: argparse.Namespace) -> Any:
    """The demo's kind of experiment (demo, domain-shift) narrowed by the flags (--datasets names its shifts)."""
    from latteclip import api

    return api.shift_experiment(args.experiment, shifts=_listed(args.datasets), **_selection(args))


def _run_shifts(args: argparse.Namespace) -> int:
    """Its runs one after the other in this process, or through the launcher the paper's runs use when --launcher or
    --devices is given."""
    from latteclip import api

    experiment = _shift_experiment(args)
    launcher = _launch_settings(args, experiment) if args.launcher or args.devices else None
    runs = api.run_experiment(experiment, experiment.choose, lambda line: print(line, flush=True), launcher=launcher)
    print(api.shift_results_table(experiment, runs))
    return 0


def _launch_settings(args: argparse.Namespace, experiment: Any) -> Any:
    """The launcher's settings from the flags; its files under the experiment's output folder."""
    from latteclip import api
    from latteclip.errors import LatteclipError

    sbatch = dict(item.split("=", 1) for item in args.sbatch or [] if "=" in item)
    if len(sbatch) != len(args.sbatch or []):
        raise LatteclipError("--slurm-sbatch takes KEY=VALUE, e.g. account=proj")
    return api.experiment_launch(
        experiment,
        launcher=args.launcher,
        devices=tuple(comma_list(args.devices)) if args.devices else None,
        partition=args.partition,
        timeout_min=args.timeout_min,
        gpus_per_job=args.gpus_per_job,
        cpus_per_job=args.cpus_per_job,
        array_parallelism=args.array_parallelism,
        sbatch=sbatch or None,
    )


def _run(args: argparse.Namespace) -> int:
    from latteclip import api

    if api.is_shift_experiment(str(args.experiment)):
        return _run_shifts(args)
    plan = load_from_args(args)
    settings = _launch_settings(args, plan)
    outcomes = api.run_experiment_plan(plan, settings, lambda line: print(line, flush=True))
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"failed {outcome.name}: {outcome.message}")
    print(
        f"{len(outcomes) - len(failed)} runs finished now, {len(failed)} failed; `latteclip experiment tables "
        f"{args.experiment}` for the page" + ("; `run` again retries the failed ones" if failed else "")
    )
    return 1 if failed else 0


def _status(args: argparse.Namespace) -> int:
    from latteclip import api

    if api.is_shift_experiment(str(args.experiment)):
        _print_states(api.shift_status(_shift_experiment(args)))
        return 0
    status = api.experiment_status(load_from_args(args), args.step_seconds, args.step_benchmark)
    _print_states([(run.name, state) for run, state in status.states])
    size = status.size
    print(
        f"plan: {size.runs} runs, {size.description_stages} description stages, {size.descriptions} descriptions: "
        f"{size.lmm_hours:.1f} LMM hours at the paper's 1.2 s each"
        + (f" (without {', '.join(size.unknown)}: give --data-root to count them)" if size.unknown else "")
    )
    steps = f"GPU: {size.train_steps} training steps (the authors' schedules; evaluation and descriptions not counted"
    steps += f"; without {', '.join(size.unknown)})" if size.unknown else ")"
    if status.step_cost is None:
        print(
            f"{steps} x the seconds of one step / 3600 = GPU hours; the seconds need a GPU measurement: "
            "`benchmarks/train_step.py --device cuda --batch-size 512 --json FILE`, then --step-benchmark FILE "
            "(or --step-seconds S)"
        )
    else:
        cost = status.step_cost
        print(f"{steps} x {cost.seconds:.4g} s a step ({cost.source}) = {status.gpu_hours:.2f} GPU hours")
    return 0


def _print_states(states: list[tuple[str, Any]]) -> None:
    """Each run's state and line, then how many are done and what remains."""
    counts: dict[str, int] = {}
    for name, state in states:
        counts[state.state] = counts.get(state.state, 0) + 1
        print(f"{state.state:<12} {name}" + (f": {state.message}" if state.message else ""))
    remaining = {state: n for state, n in counts.items() if state != "done"}
    print(
        f"{counts.get('done', 0)} done, {sum(remaining.values())} remain"
        + (" (" + ", ".join(f"{n} {state}" for state, n in remaining.items()) + ")" if remaining else "")
    )


def _tables(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latteclip import api
    from latteclip.paths import check_writable_file

    if args.out:
        check_writable_file(Path(args.out), "--out", args.overwrite)
    if api.is_shift_experiment(str(args.experiment)):
        page = api.shift_tables(_shift_experiment(args)) + "\n"
    else:
        page = api.experiment_tables(load_from_args(args), Path(args.out) if args.out else None)
    if args.out:
        Path(args.out).write_text(page)
        print(f"tables: {args.out}")
    else:
        print(page, end="")
    return 0
