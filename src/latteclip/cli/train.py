"""`train`, `zeroshot` and `eval`: the commands that run a method and measure a checkpoint."""

from __future__ import annotations

import argparse

from latteclip.cli import (
    add_data_arguments,
    add_eval_arguments,
    add_lmm_arguments,
    add_method_option_arguments,
    add_model_arguments,
    add_option_arguments,
    add_run_arguments,
    command,
    config_from_args,
    describe_settings,
    interruptible,
    print_descriptions,
    print_summary,
)
from latteclip.config import machine_cpus
from latteclip.describe.settings import ANSWERS


# --- commands -----------------------------------------------------------------------------------------
def _train_args(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser, "method")
    add_data_arguments(parser, "train_fraction")
    add_eval_arguments(parser)
    add_model_arguments(parser)
    add_run_arguments(parser)
    add_option_arguments(
        parser.add_argument_group("optimisation"),
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_steps",
        "max_steps",
        "epochs",
        "lr_schedule",
        "epoch_length",
        "authors_steps_per_epoch",
        "optimizer",
        "sgd_momentum",
        "grad_clip",
        "augment",
        "augment_policy",
        "precision",
        "grad_checkpointing",
        "compile",
        "deterministic",
        "eval_every",
        "checkpoint_every",
        "log_every",
        "resume",
        "store",
    )
    add_method_option_arguments(parser)


@command("train", "fine-tune (or evaluate zero-shot) with a method; writes a run folder")
def _train_parser(parser):
    _train_args(parser)
    parser.add_argument(
        "--nproc", type=int, help="processes on this machine (one per GPU); same as torchrun --nproc-per-node N"
    )


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """Run this same command under torchrun with `nproc` processes (single machine)."""
    import os
    import subprocess
    import sys

    cleaned, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            cleaned.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "latteclip",
        *cleaned,
    ]
    return subprocess.call(command, env=os.environ.copy())


@_train_parser
def run_train(args: argparse.Namespace) -> int:
    import os
    import sys

    from latteclip import api, distributed

    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return relaunch_with_torchrun(args.nproc, sys.argv[1:] if args.argv is None else args.argv)

    config = config_from_args(args)
    results = api.train(config)
    if distributed.is_main():
        print_summary(results)
        print(f"run folder: {config.run_dir}")
    return 0


@command("zeroshot", "CLIP zero-shot accuracy (first template or --ensemble); caches test features")
def _zeroshot_parser(parser):
    add_data_arguments(parser)
    add_eval_arguments(parser)
    add_model_arguments(parser)
    add_run_arguments(parser)
    parser.add_argument("--ensemble", action="store_true", help="average every template of the dataset")
    add_lmm_arguments(parser, ANSWERS)  # --lmm ...: the LMM zero-shot baseline instead of CLIP's


@_zeroshot_parser
def run_zeroshot(args: argparse.Namespace) -> int:
    import dataclasses

    from latteclip import api

    if args.lmm:
        return run_lmm_zeroshot(args)
    config = config_from_args(args, method="zeroshot")
    # zero-shot has one option; other methods' options in a shared --config file do not apply to it
    ensemble = bool(args.ensemble) or bool(config.method_options.get("ensemble", False))
    config = dataclasses.replace(config, method_options={"ensemble": ensemble})
    results = api.train(config)
    print_summary(results)
    print(f"run folder: {config.run_dir}")
    return 0


@interruptible
def run_lmm_zeroshot(args: argparse.Namespace) -> int:
    """`zeroshot --lmm ...`: the LMM picks each test image's class among the class names; writes a run folder."""
    from latteclip import api

    config = config_from_args(args, method="lmm_zeroshot")
    results = api.lmm_zero_shot(config, describe_settings(args, config), args.prompts, print_descriptions)
    if results is None:
        print("some test images have no answer yet: rerun the same command to ask for the rest (answers are kept)")
        return 1
    print_summary(results)
    counts = results["test"]["answers"]
    print(
        f"answers: {counts['exact']} exact, {counts['case_insensitive']} case-insensitive, {counts['similar']} by "
        f"similarity, {counts['unmapped']} unmapped ({100 * counts['unmapped_share']:.1f}%, counted wrong)"
    )
    print(f"run folder: {config.run_dir}")
    return 0


@command("eval", "accuracy of a trained checkpoint (final.pt) on a dataset's test split")
def _eval_parser(parser):
    parser.add_argument("--checkpoint", required=True, help="a run's final.pt")
    add_data_arguments(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=machine_cpus(), help="data-loading worker processes")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    parser.add_argument("--out", help="where to write the JSON report (default: eval.json beside the checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="replace the --out file when it exists")


@_eval_parser
def run_eval(args: argparse.Namespace) -> int:
    from latteclip import api
    from latteclip.config import Inference

    data = {k: getattr(args, k) for k in api.DATA_OPTIONS}
    inference = Inference(args.device, args.batch_size, args.workers)
    done = api.evaluate(args.checkpoint, args.dataset, args.root, data, inference, args.out, args.overwrite)
    report = done.report
    print(
        f"{done.method} checkpoint on {done.dataset}: top-1 {100 * report['top1']:.2f}% on {report['n']} test images "
        f"-> {done.out}"
    )
    return 0
