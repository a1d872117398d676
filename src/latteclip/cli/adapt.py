"""`adapt`: the whole job on your own unlabeled images, in one command (`latteclip.api.adapt`).

Zero-shot, the description stage, training, a predictions CSV for every input image and the report,
each reused when it is already done, so a rerun after a kill picks up where it stopped.
"""

from __future__ import annotations

import argparse

from latteclip.cli import (
    add_eval_arguments,
    add_field_flags,
    add_lmm_arguments,
    add_method_option_arguments,
    add_model_arguments,
    add_option_arguments,
    command,
    describe_settings,
    run_values,
)
from latteclip.describe.settings import WHAT, DescribeSettings


@command(
    "adapt", "adapt a CLIP model to your unlabeled images: zero-shot, descriptions, training, predictions CSV, report"
)
def _adapt_parser(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("your images")
    group.add_argument(
        "--root", required=True, help="a folder of images (searched recursively) or a .txt file listing image paths"
    )
    group.add_argument("--classnames", required=True, help="the class names: one per line, or a JSON list")
    add_option_arguments(group, "templates", "domain", "seed")
    parser.add_argument(
        "--method",
        default="latteclip",
        help="a label-free method: latteclip (default), flyp_pl, reclip, coft, coft_plus",
    )
    add_eval_arguments(parser)
    add_model_arguments(parser)
    add_lmm_arguments(parser)
    add_field_flags(parser.add_argument_group(WHAT), DescribeSettings, "group_size", "group_draw")
    group = parser.add_argument_group("run")
    group.add_argument("--config", help="YAML file of options (describe options under 'describe:'); flags override it")
    group.add_argument("--output", help="folder that holds the adaptation folder (default runs/)")
    group.add_argument("--name", help="adaptation folder name (default adapt-ROOTNAME)")
    add_option_arguments(group, "workers", "eval_batch_size", "batch_size", "lr", "max_steps", "epochs", "warmup_steps")
    add_method_option_arguments(parser)


@_adapt_parser
def run_adapt(args: argparse.Namespace) -> int:
    from latteclip import api

    config = api.adapt_config(config_file=args.config, **run_values(args))
    done = api.adapt(config, describe_settings(args, config), args.prompts, lambda line: print(line, flush=True))
    print(f"adapted model: {done.model} (export with `latteclip export --checkpoint ... --out DIR`)")
    print(f"predictions:   {done.predictions}")
    print(f"report:        {done.report}")
    print(f"descriptions:  {done.store}")
    return 0
