"""`pretrain`: contrastive pre-training of an OpenCLIP model on captioned labelled images, cached."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from latteclip.cli import add_data_arguments, add_model_arguments, command, config_from_args
from latteclip.config import AUGMENT_POLICIES


@command("pretrain", "contrastive pre-training on image-caption pairs made from labels (default: the demo's tiny CLIP on Fashion-MNIST); cached")
def _pretrain_parser(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_model_arguments(parser)
    group = parser.add_argument_group("run (the run folder lives in the cache: <cache>/pretrained/runs/<key>)")
    group.add_argument("--config", help="YAML file of options; command-line flags override it")
    group.add_argument("--workers", type=int, help="data-loading worker processes")
    group.add_argument("--eval-batch-size", dest="eval_batch_size", type=int)
    group = parser.add_argument_group("optimisation")
    group.add_argument("--batch-size", dest="batch_size", type=int)
    group.add_argument("--lr", type=float)
    group.add_argument("--weight-decay", dest="weight_decay", type=float)
    group.add_argument("--warmup-steps", dest="warmup_steps", type=int)
    group.add_argument("--epochs", type=int)
    group.add_argument("--max-steps", dest="max_steps", type=int)
    group.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--augment-policy", dest="augment_policy", choices=AUGMENT_POLICIES,
                       help="train-time augmentation after the crop (default clip: colour jitter and grey)")
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
        f"pre-trained {config.model} on {config.dataset} ({state}): zero-shot top-1 {100 * summary['clean_test_top1']:.2f}% "
        f"on its test split after {summary['steps']} steps"
    )
    weights = result.path
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        weights = Path(shutil.copyfile(result.path, args.out))
    print(f"weights: {weights}  (use with --model {config.model} --pretrained {weights})")
    return 0
