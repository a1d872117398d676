"""`train`, `zeroshot` and `eval`: the commands that run a method and measure a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latteclip.cli import (
    add_data_arguments,
    add_eval_arguments,
    add_method_option_arguments,
    add_model_arguments,
    add_option_arguments,
    add_run_arguments,
    command,
    config_from_args,
    print_summary,
)
from latteclip.cli.describe import add_lmm_zeroshot_arguments, run_lmm_zeroshot
from latteclip.config import machine_cpus
from latteclip.errors import LatteclipError
from latteclip.paths import check_writable_file
from latteclip.values import at_least


# --- commands -----------------------------------------------------------------------------------------
def _train_args(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser, "method")
    add_data_arguments(parser)
    add_eval_arguments(parser)
    add_model_arguments(parser)
    add_run_arguments(parser)
    add_option_arguments(parser.add_argument_group("optimisation"), "batch_size", "lr", "weight_decay", "warmup_steps", "max_steps",
                         "epochs", "optimizer", "sgd_momentum", "grad_clip", "augment", "augment_policy", "precision",
                         "grad_checkpointing", "compile", "eval_every", "checkpoint_every", "log_every", "resume", "store")
    add_method_option_arguments(parser)


@command("train", "fine-tune (or evaluate zero-shot) with a method; writes a run folder")
def _train_parser(parser):
    _train_args(parser)
    parser.add_argument("--nproc", type=int, help="processes on this machine (one per GPU); same as torchrun --nproc-per-node N")


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
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "latteclip", *cleaned]
    return subprocess.call(command, env=os.environ.copy())


@_train_parser
def run_train(args: argparse.Namespace) -> int:
    import os
    import sys

    from latteclip.engine.trainer import run_training

    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return relaunch_with_torchrun(args.nproc, sys.argv[1:] if args.argv is None else args.argv)

    config = config_from_args(args)
    results = run_training(config)
    from latteclip import distributed

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
    add_lmm_zeroshot_arguments(parser)  # --lmm ...: the LMM zero-shot baseline instead of CLIP's


@_zeroshot_parser
def run_zeroshot(args: argparse.Namespace) -> int:
    from latteclip.engine.trainer import run_training

    if args.lmm:
        return run_lmm_zeroshot(args)

    ensemble = bool(args.ensemble)
    config = config_from_args(args, method="zeroshot")
    # zero-shot has one option; other methods' options in a shared --config file do not apply to it
    config.method_options = {"ensemble": ensemble or bool(config.method_options.get("ensemble", False))}
    results = run_training(config)
    print_summary(results)
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


@_eval_parser
def run_eval(args: argparse.Namespace) -> int:
    from latteclip.data import DatasetOptions, build_dataset
    from latteclip.engine.checkpoint import load_final_checkpoint
    from latteclip.engine.evaluate import evaluate
    from latteclip.engine.session import method_from_checkpoint, pick_device

    at_least(args.batch_size, 1, "--batch-size")
    at_least(args.workers, 0, "--workers")
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("eval.json")
    check_writable_file(out, "--out")
    payload = load_final_checkpoint(args.checkpoint)
    saved = payload["config"]
    dataset = args.dataset or saved["dataset"]
    root = args.root or saved["root"]
    # the training run's data options (limit, split file, names) describe its own dataset only
    inherited = saved if (dataset, root) == (saved["dataset"], saved["root"]) else {}
    given = {k: getattr(args, k) for k in ("limit", "seed", "classnames", "templates", "domain", "split_file", "prompt_set")}
    options = DatasetOptions.from_run({
        **inherited, "seed": saved.get("seed", 0), "prompt_set": saved.get("prompt_set", "clip"),
        **{k: v for k, v in given.items() if v is not None and v != ""},
    })
    test_set = build_dataset(dataset, root, "test", None, options)  # the data is checked before the model loads
    device = pick_device(args.device)
    method = method_from_checkpoint(payload, device)
    loaded = method.loaded
    test_set.transform = loaded.eval_transform()
    if test_set.info.num_classes != method.info.num_classes:
        raise LatteclipError(f"{dataset} has {test_set.info.num_classes} classes but the checkpoint has {method.info.num_classes}")
    # the precision the run evaluated with, so that the accuracy matches its results.json on GPU too
    report = evaluate(method, test_set, device, args.batch_size, args.workers, saved.get("precision", "auto"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "dataset": dataset, **report}, indent=1))
    print(f"{payload['method']} checkpoint on {dataset}: top-1 {100 * report['top1']:.2f}% on {report['n']} test images -> {out}")
    return 0


