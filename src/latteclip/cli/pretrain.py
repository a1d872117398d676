"""`pretrain`: contrastive pre-training of an OpenCLIP model on captioned labelled images, cached."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from latteclip.cli import add_data_arguments, add_model_arguments, add_option_arguments, command, config_from_args


@command(
    "pretrain",
    "contrastive pre-training on image-caption pairs made from labels (default: the demo's tiny CLIP on "
    "Fashion-MNIST); cached",
)
def _pretrain_parser(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_model_arguments(parser)
    group = parser.add_argument_group("run (the run folder lives in the cache: <cache>/pretrained/runs/<key>)")
    group.add_argument("--config", help="YAML file of options; command-line flags override it")
    add_option_arguments(group, "workers", "eval_batch_size")
    add_option_arguments(
        parser.add_argument_group("optimisation"),
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_steps",
        "epochs",
        "max_steps",
        "augment",
        "augment_policy",
    )
    parser.add_argument("--out", help="also copy the weights to this file (.safetensors)")
    parser.add_argument("--force", action="store_true", help="train again even when the cache holds these weights")


@_pretrain_parser
def run_pretrain(args: argparse.Namespace) -> int:
    from latteclip.engine.pretraining import pretrained_weights

    config = config_from_args(args, method="pretrain", dataset=args.dataset or "fmnist")
    result = pretrained_weights(config, force=args.force)
    summary = result.summary
    state = "reused from the cache" if result.cached else f"trained in {summary['timings']['total_s']:.0f} s"
    print(
        f"pre-trained {config.model} on {config.dataset} ({state}): zero-shot top-1 "
        f"{100 * summary['clean_test_top1']:.2f}% on its test split after {summary['steps']} steps"
    )
    weights = result.path
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        weights = Path(shutil.copyfile(result.path, args.out))
    print(f"weights: {weights}  (use with --model {config.model} --pretrained {weights})")
    return 0
