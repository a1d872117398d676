"""`describe`: image and group descriptions of every training image from an LMM (method.md 1.2), stored for
training; the work is `latteclip.api.describe`."""

from __future__ import annotations

import argparse

from latteclip.cli import (
    add_data_arguments,
    add_describe_arguments,
    add_lmm_arguments,
    add_model_arguments,
    add_option_arguments,
    command,
    config_from_args,
    describe_settings,
    interruptible,
    print_descriptions,
)
from latteclip.describe.settings import BATCH, WHAT


@command("describe", "image and group descriptions of every training image from an LMM, stored for training")
def _describe_parser(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, "train_fraction")  # describe only the training images a run keeps
    add_model_arguments(parser)
    add_lmm_arguments(parser)
    add_describe_arguments(parser, WHAT, BATCH)
    group = parser.add_argument_group("run")
    group.add_argument("--config", help="YAML file of options (describe options under 'describe:'); flags override it")
    add_option_arguments(group, "workers", "eval_batch_size")  # of the zero-shot label pass that draws the groups
    group.add_argument(
        "--batch-out",
        dest="batch_out",
        metavar="FILE.jsonl",
        help="with --lmm batch: write every missing "
        "request as an OpenAI Batch file (for vllm run-batch or the OpenAI Batch API); needs --lmm-model",
    )
    group.add_argument(
        "--batch-in",
        dest="batch_in",
        metavar="RESULTS.jsonl",
        nargs="+",
        help="with --lmm batch: "
        "store the answers of Batch results files (vllm run-batch or OpenAI Batch API output): paths or "
        "quoted glob patterns such as 'results-*.jsonl'",
    )
    group.add_argument(
        "--import", dest="import_file", metavar="FILE.jsonl", help="load descriptions made elsewhere first"
    )
    group.add_argument(
        "--export",
        metavar="FILE.jsonl",
        help="write every stored description of the dataset's training images, one JSON object per line",
    )


@_describe_parser
@interruptible
def run_describe(args: argparse.Namespace) -> int:
    """Describe every training image (only what the store lacks); import/export JSON lines; 0 when all are described."""
    from latteclip import api

    config = config_from_args(args)
    done = api.describe(
        config,
        describe_settings(args, config),
        args.prompts,
        args.batch_out,
        args.batch_in,
        args.import_file,
        args.export,
    )
    if done.imported is not None:
        print(f"imported {done.imported} descriptions from {args.import_file} into {done.store}")
    if done.summary is not None:
        print_descriptions(done.summary, done.describer)
    if done.exported is not None:
        print(f"exported {done.exported} descriptions of {done.dataset} to {args.export}")
    if done.unreadable:
        print(f"{len(done.unreadable)} training images could not be read (first: {done.unreadable[0]})")
    return 0 if done.complete else 1
