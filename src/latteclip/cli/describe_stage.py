"""`describe` and `zeroshot --lmm` once their arguments are parsed: options into typed settings, then the
library calls (engine.describing for the description stage, engine.lmm_zeroshot for the LMM baseline),
plus the store's JSON-lines import and export."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import PurePosixPath
from typing import Callable

from latteclip.cli import config_from_args, print_summary
from latteclip.config import RunConfig
from latteclip.data import ImageDataset, build_dataset
from latteclip.describe.jobs import image_hashes
from latteclip.describe.prompts import Prompts, load_prompts
from latteclip.describe.runner import Summary
from latteclip.describe.settings import DescribeSettings, resolve_settings
from latteclip.describe.store import DescriptionStore, image_key
from latteclip.engine.describing import check_analysis, describe_training_images
from latteclip.engine.session import dataset_options
from latteclip.errors import LatteclipError

LMM_OPTIONS = ("lmm", "lmm_url", "lmm_model", "lmm_timeout", "lmm_retries", "lmm_batch_size", "lmm_ca_bundle",
               "lmm_insecure", "concurrency", "stop_after_failures")
DESCRIBE_OPTIONS = LMM_OPTIONS + ("kinds", "group_size", "group_draw", "with_label", "true_class_members", "vocabulary",
                                  "describer_model", "describer_pretrained", "batch_shards")


def _settings(args: argparse.Namespace, config: RunConfig, names: tuple[str, ...]) -> DescribeSettings:
    given = {name: getattr(args, name, None) for name in names}
    if given.get("lmm_url"):
        given["lmm_url"] = [url for urls in given["lmm_url"] for url in urls]
    return resolve_settings(config.describe, given)


def _prompts(args: argparse.Namespace, settings: DescribeSettings, dataset_prompts: dict[str, str]) -> Prompts:
    """The bundled prompts, the dataset's own, the config's `describe.prompts`, then --prompts FILE|paper."""
    return load_prompts(dataset_prompts, settings.prompts, args.prompts)


def _print_summary(summary: Summary, describer_name: str) -> None:
    print(f"descriptions by {describer_name}:")
    for line in summary.lines():
        print(f"  {line}")


def interruptible(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Ctrl-C ends a command with a note that the answers received are kept (the runner has stored them)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt:
            print("interrupted: every answer received is stored; run the same command again for the rest", file=sys.stderr)
            return 130

    return run


@interruptible
def describe_command(args: argparse.Namespace) -> int:
    """Describe every training image (only what the store lacks); import/export JSON lines; 0 when all are described."""
    config = config_from_args(args)
    settings = _settings(args, config, DESCRIBE_OPTIONS)
    if not (settings.lmm or args.import_file or args.export):
        raise LatteclipError("nothing to do: choose a describer with --lmm (openai, transformers, offline, batch), or pass --import/--export")
    _check_batch_options(args, settings)
    if settings.true_class_members is not None and settings.lmm and not config.store:
        raise LatteclipError("--true-class-members makes groups from the TRUE labels: pass a separate --store FILE for them, "
                             "so label-free training never reads them by accident")
    train = build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
    check_analysis(settings, train)
    with DescriptionStore(config.store) as store:
        hashes = image_hashes(train)
        unreadable = [s.path for s, h in zip(train.samples, hashes) if h is None]
        if args.import_file:
            count = store.import_jsonl(args.import_file, _image_hasher(train, hashes), train.info.name)
            print(f"imported {count} descriptions from {args.import_file} into {store.path}")
        summary = None
        if settings.lmm:
            summary, describer_name = describe_training_images(config, settings, _prompts(args, settings, train.info.prompts), train,
                                                               hashes, store, args.batch_out, args.batch_in)
            _print_summary(summary, describer_name)
        if args.export:
            images = {h: s.path for s, h in zip(train.samples, hashes) if h is not None}
            count = store.export_jsonl(args.export, images)
            print(f"exported {count} descriptions of {train.info.name} to {args.export}")
    if unreadable:
        print(f"{len(unreadable)} training images could not be read (first: {unreadable[0]})")
    return 0 if (summary is None or summary.complete) and not unreadable else 1


def _check_batch_options(args: argparse.Namespace, settings: DescribeSettings) -> None:
    files = bool(args.batch_out) + bool(args.batch_in)
    if settings.lmm == "batch" and files != 1:
        raise LatteclipError("--lmm batch needs one of --batch-out FILE.jsonl (write the requests) or --batch-in RESULTS.jsonl "
                             "(store the answers)")
    if files and settings.lmm != "batch":
        raise LatteclipError("--batch-out/--batch-in go with --lmm batch")
    if settings.batch_shards > 1 and not args.batch_out:
        raise LatteclipError("--batch-shards N splits the requests --batch-out writes: pass --batch-out FILE.jsonl")
    if settings.lmm == "batch" and not settings.lmm_model:
        raise LatteclipError("--lmm batch needs --lmm-model NAME: the model the batch runs (each request names it)")


def _image_hasher(dataset: ImageDataset, hashes: list[str | None]):
    """Path under the dataset root -> content hash, for imported lines that name images by path."""
    known = {s.path: h for s, h in zip(dataset.samples, hashes) if h is not None}

    def hash_of(path: str) -> str | None:
        if path in known:
            return known[path]
        parts = PurePosixPath(path.replace("\\", "/"))
        if parts.is_absolute() or ".." in parts.parts:
            raise LatteclipError(f"imported image path {path} is not inside the dataset root: give a path relative to --root")
        try:
            return image_key(dataset.source.read(path))
        except (OSError, KeyError):
            return None

    return hash_of


# --- the LMM zero-shot baseline (`zeroshot --lmm ...`) ---------------------------------------------------
@interruptible
def lmm_zeroshot_command(args: argparse.Namespace) -> int:
    """Ask the LMM to pick each test image's class among the class names; map answers; write a run folder."""
    from latteclip.engine.lmm_zeroshot import lmm_zero_shot

    config = config_from_args(args, method="lmm_zeroshot")
    settings = _settings(args, config, LMM_OPTIONS + ("answer_cutoff", "lmm_answer_format"))
    results = lmm_zero_shot(config, settings, args.prompts, _print_summary)
    if results is None:
        print("some test images have no answer yet: rerun the same command to ask for the rest (answers are kept)")
        return 1
    print_summary(results)
    counts = results["test"]["answers"]
    print(f"answers: {counts['exact']} exact, {counts['case_insensitive']} case-insensitive, {counts['similar']} by "
          f"similarity, {counts['unmapped']} unmapped ({100 * counts['unmapped_share']:.1f}%, counted wrong)")
    print(f"run folder: {config.run_dir}")
    return 0
