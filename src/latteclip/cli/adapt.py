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
from latteclip.engine.score_names import DEFAULT_SCORE, DEFAULT_SCORE_UNDESCRIBED, SCORE_NAMES


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
    group = parser.add_argument_group("label-free choice")
    group.add_argument(
        "--choose",
        action="append",
        metavar="OPTION=A,B,C",
        help="train a candidate per value (repeat for every combination), e.g. "
        "--choose lr=1e-7,1e-6,1e-5; default: three learning rates (or the --lr given)",
    )
    group.add_argument(
        "--choose-by",
        metavar="SCORE",
        help=f"the label-free score that picks (default: {DEFAULT_SCORE} with --lmm, where the describer reads the "
        f"held-back images, else {DEFAULT_SCORE_UNDESCRIBED}); one of {', '.join(SCORE_NAMES)}",
    )
    group.add_argument(
        "--holdout", type=float, help="share of the images held back to score the candidates on (default 0.1)"
    )
    add_method_option_arguments(parser)


@_adapt_parser
def run_adapt(args: argparse.Namespace) -> int:
    from latteclip import api

    given = run_values(args)
    config = api.adapt_config(config_file=args.config, **given)
    candidates = api.adapt_candidates(args.choose, given)
    done = api.adapt(
        config,
        describe_settings(args, config),
        args.prompts,
        lambda line: print(line, flush=True),
        candidates,
        args.choose_by,
        args.holdout,
    )
    print(f"adapted model: {done.model} (export with `latteclip export --checkpoint ... --out DIR`)")
    print(f"predictions:   {done.predictions}")
    print(f"report:        {done.report}")
    print(f"descriptions:  {done.store}")
    verdict = done.verdict
    for signal in verdict["signals"]:
        print(f"WARNING: {signal}")
    use = "the zero-shot model's" if verdict["use"] == "zero-shot" else "the adapted model's"
    print(f"verdict:       use {use} predictions, {verdict['predictions']}: {verdict['why']}")
    return 0
