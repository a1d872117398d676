"""`adapt`: the whole job on your own unlabeled images, in one command.

Zero-shot, the description stage, training, a predictions CSV for every input image and the report,
each reused when it is already done, so a rerun after a kill picks up where it stopped. The work is
done by library calls (engine, report); nothing re-enters the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latteclip.cli import add_eval_arguments, add_method_option_arguments, add_model_arguments, add_option_arguments, command, config_from_args
from latteclip.cli.describe import add_lmm_arguments
from latteclip.errors import LatteclipError

PREDICTIONS_FILE = "predictions.csv"


@command("adapt", "adapt a CLIP model to your unlabeled images: zero-shot, descriptions, training, predictions CSV, report")
def _adapt_parser(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("your images")
    group.add_argument("--root", required=True, help="a folder of images (searched recursively) or a .txt file listing image paths")
    group.add_argument("--classnames", required=True, help="the class names: one per line, or a JSON list")
    add_option_arguments(group, "templates", "domain", "seed")
    parser.add_argument("--method", default="latteclip", help="a label-free method: latteclip (default), flyp_pl, reclip, coft, coft_plus")
    add_eval_arguments(parser)
    add_model_arguments(parser)
    add_lmm_arguments(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--config", help="YAML file of options (describe options under 'describe:'); flags override it")
    group.add_argument("--output", help="folder that holds the adaptation folder (default runs/)")
    group.add_argument("--name", help="adaptation folder name (default adapt-ROOTNAME)")
    add_option_arguments(group, "workers", "eval_batch_size", "batch_size", "lr", "max_steps", "epochs", "warmup_steps")
    add_method_option_arguments(parser)


@_adapt_parser
def run_adapt(args: argparse.Namespace) -> int:
    from latteclip.experiments.runner import group_options, run_or_reuse
    from latteclip.methods import build_options, get_method

    method_cls = get_method(args.method)
    if method_cls.reads_train_labels or not method_cls.trains:
        raise LatteclipError(f"adapt trains a label-free method; --method {args.method} is not one (latteclip, flyp_pl, reclip, coft, coft_plus)")
    folder = Path(args.output or "runs") / (args.name or f"adapt-{Path(args.root).stem}")
    store = args.store or str(folder / "descriptions.sqlite")
    # the zero-shot run, then the adapted one: both on every image under --root, in one adaptation folder
    base = {"dataset": "images", "output": str(folder), "store": store}
    zero_shot = config_from_args(args, **base, method="zeroshot", name="zeroshot")
    zero_shot.method_options = {}  # zero-shot has no options of the method's
    config = config_from_args(args, **base, method=args.method, name=args.method)
    options = build_options(method_cls, dict(config.method_options))
    kinds = [kind for kind in getattr(options, "texts", []) if kind != "class"]  # what the method reads from the store
    settings = _describe_settings(args, config, kinds, group_options(config))

    print(f"[1/5] zero-shot {config.model} on {config.root}", flush=True)
    zero_shot_results = run_or_reuse(zero_shot)
    print(f"      {_measured(zero_shot_results)}; run folder {zero_shot.run_dir}", flush=True)
    print(f"[2/5] descriptions ({', '.join(kinds) or f'none: {args.method} reads none'})", flush=True)
    if kinds:
        _describe(config, settings, args)
    print(f"[3/5] training {args.method}", flush=True)
    results = run_or_reuse(config)
    print(f"      {_measured(results)}; run folder {config.run_dir}", flush=True)
    print("[4/5] predictions for every image", flush=True)
    predictions = _write_predictions(config, folder / PREDICTIONS_FILE)
    print("[5/5] report", flush=True)
    from latteclip.report import write_report

    report = write_report([config.run_dir, zero_shot.run_dir], folder / "report")
    print(f"adapted model: {config.run_dir / 'final.pt'} (export with `latteclip export --checkpoint ... --out DIR`)")
    print(f"predictions:   {predictions}")
    print(f"report:        {report}")
    print(f"descriptions:  {store}")
    return 0


def _describe_settings(args: argparse.Namespace, config, kinds: list[str], groups: dict):
    """The description stage's settings; a method that reads descriptions needs a describer, checked before any work."""
    from latteclip.describe.settings import resolve_settings

    if not kinds:
        return None
    given = {name: getattr(args, name, None) for name in ("lmm", "lmm_model", "lmm_timeout", "lmm_retries", "lmm_batch_size",
                                                          "concurrency", "stop_after_failures")}
    given["lmm_url"] = [url for urls in args.lmm_url for url in urls] if args.lmm_url else None
    given.update(kinds=kinds, **groups)  # how groups are drawn: the method's option, read back when it trains
    settings = resolve_settings(config.describe, given)
    if not settings.lmm:
        raise LatteclipError(f"--method {args.method} reads image descriptions: choose a describer with --lmm openai --lmm-url URL "
                             "(a multimodal model behind an OpenAI-compatible server), --lmm transformers or --lmm offline")
    return settings


def _describe(config, settings, args: argparse.Namespace) -> None:
    from latteclip.engine.describing import describe_run

    summary, describer = describe_run(config, settings, args.prompts)
    print(f"      {describer}: " + "; ".join(summary.lines()[:3]), flush=True)
    if not summary.complete:
        raise LatteclipError(f"the description stage did not finish ({summary.lines()[-1]}); run the same command again: "
                             "what was described is kept")


def _write_predictions(config, path: Path) -> Path:
    """predictions.csv for every input image (the same rows as `latteclip predict --format csv`), unless newer than final.pt."""
    final = config.run_dir / "final.pt"
    if path.is_file() and path.stat().st_mtime >= final.stat().st_mtime:
        return path
    from latteclip.cli.predict import format_csv, load_trained_method
    from latteclip.data import build_dataset
    from latteclip.engine.predict import predict_files
    from latteclip.engine.session import dataset_options
    from latteclip.paths import atomic_write_bytes

    images = build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
    files = [Path(images.source.location) / sample.path for sample in images.samples]
    method = load_trained_method(str(final), config.device)
    rows = predict_files(method, files, top_k=min(5, method.info.num_classes), batch_size=config.eval_batch_size, workers=config.workers)
    atomic_write_bytes(path, format_csv(rows).encode())
    return path


def _measured(results: dict) -> str:
    if results["top1"] is not None:
        return f"top-1 {100 * results['top1']:.2f}% on {results['evaluated_on']}"
    adapted = results["diagnostics"]["adapted"]
    return (f"no labels: {100 * adapted['top_class_share']:.1f}% of images in the top class ({adapted['top_class']}), "
            f"{100 * results['diagnostics']['changed_from_zero_shot']:.1f}% changed from zero-shot")
