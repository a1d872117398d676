"""The work behind `describe` and `zeroshot --lmm`: where the description layer meets the engine.

The zero-shot pseudo-labels that groups are drawn by come from the engine's cached feature pass
(the same cache training reads), and the LMM baseline's accuracy uses the engine's report, so
its results.json sits beside those of the other methods.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import PurePosixPath
from typing import Callable

import torch

from latteclip.cli import config_from_args, print_summary
from latteclip.config import RunConfig, save_config
from latteclip.data import ImageDataset, build_dataset
from latteclip.describe.answers import class_choice_format, constrained_text, map_answer, mapping_counts
from latteclip.describe.jobs import image_hashes, image_jobs
from latteclip.describe.prompts import Prompts, load_prompts
from latteclip.describe.runner import Runner, Summary
from latteclip.describe.settings import DescribeSettings, build_describer, resolve_settings
from latteclip.describe.store import DescriptionStore, image_key
from latteclip.engine.describing import check_analysis, describe_training_images, device_and_model
from latteclip.engine.evaluate import accuracy_report
from latteclip.engine.results import RunResults, write_results
from latteclip.engine.session import dataset_options
from latteclip.errors import LatteclipError

LMM_OPTIONS = ("lmm", "lmm_url", "lmm_model", "lmm_timeout", "lmm_retries", "lmm_batch_size", "concurrency", "stop_after_failures")
DESCRIBE_OPTIONS = LMM_OPTIONS + ("kinds", "group_size", "group_draw", "with_label", "true_class_members", "vocabulary",
                                  "describer_model", "describer_pretrained")
UNMAPPED = "(unmapped)"


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
    store = DescriptionStore(config.store)
    try:
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
    finally:
        store.close()
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
    started = time.time()
    config = config_from_args(args, method="lmm_zeroshot")
    settings = _settings(args, config, LMM_OPTIONS + ("answer_cutoff", "lmm_answer_format"))
    if settings.lmm == "offline":
        raise LatteclipError("the offline describer ignores prompts, so it cannot answer the multiple-choice question: "
                             "use --lmm openai or --lmm transformers")
    constrained = settings.lmm_answer_format == "json-schema"
    if constrained and settings.lmm != "openai":
        raise LatteclipError("--lmm-answer-format json-schema sends an OpenAI response_format: use it with --lmm openai")
    test = build_dataset(config.dataset, config.root, "test", None, dataset_options(config))
    info = test.info
    prompt = _prompts(args, settings, info.prompts).multiple_choice(info.classnames, info.domain)
    device, _ = device_and_model(config, needs_clip=False)
    describer = build_describer(settings, info.domain, None, device)
    store = DescriptionStore(config.store)
    try:
        hashes = image_hashes(test)
        runner = Runner(describer, store, info.name, settings.concurrency, settings.stop_after_failures)
        variant = settings.lmm_answer_format if constrained else ""
        response_format = class_choice_format(info.classnames) if constrained else None
        summary = runner.run(image_jobs(test, hashes, lambda i: prompt, "zeroshot", response_format, variant))
        answers = store.get_texts([h or "" for h in hashes], "zeroshot", model=describer.model, prompt=prompt, variant=variant)
    finally:
        describer.close()
        store.close()
    _print_summary(summary, f"{describer.backend} {describer.model}")
    if not summary.complete:
        print("some test images have no answer yet: rerun the same command to ask for the rest (answers are kept)")
        return 1

    classnames = info.classnames
    valid = torch.tensor([a is not None for a in answers])
    mapped = [map_answer(constrained_text(a or "") if constrained else a or "", classnames, settings.answer_cutoff) for a in answers]
    predictions = torch.tensor([m.label if m.label is not None else len(classnames) for m in mapped])
    # an extra "(unmapped)" class keeps wrong-because-unmapped answers visible in the confusion matrix
    report = accuracy_report(predictions, test.labels, valid, [*classnames, UNMAPPED])
    report["per_class"].pop(UNMAPPED)
    report["confusion"] = report["confusion"][: len(classnames)]
    report["answers"] = mapping_counts([m for m, ok in zip(mapped, valid.tolist()) if ok])
    results: RunResults = {
        "method": "lmm_zeroshot",
        "dataset": config.dataset,
        "model": describer.model,
        "pretrained": describer.backend,
        "seed": config.seed,
        "steps": 0,
        "top1": report["top1"],
        "test": report,
        "unreadable_train_images": 0,
        "unreadable_test_images": report["unreadable"],
        "timings": {"total_s": time.time() - started},
        "lmm": {"backend": describer.backend, "model": describer.model, "prompt": prompt, "answer_cutoff": settings.answer_cutoff,
                "answer_format": settings.lmm_answer_format},
    }
    _write_lmm_run(config, settings, results, test, answers, mapped)
    print_summary(results)
    counts = report["answers"]
    print(f"answers: {counts['exact']} exact, {counts['case_insensitive']} case-insensitive, {counts['similar']} by "
          f"similarity, {counts['unmapped']} unmapped ({100 * counts['unmapped_share']:.1f}%, counted wrong)")
    print(f"run folder: {config.run_dir}")
    return 0


def _write_lmm_run(config: RunConfig, settings: DescribeSettings, results: RunResults, test: ImageDataset, answers, mapped) -> None:
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    config.describe = {k: v for k, v in vars(settings).items() if v is not None}
    save_config(config, run_dir / "config.yaml")
    classnames = test.info.classnames
    with open(run_dir / "answers.jsonl", "w", encoding="utf-8") as handle:
        for sample, answer, m in zip(test.samples, answers, mapped):
            handle.write(json.dumps({
                "image": sample.path, "label": classnames[sample.label], "answer": answer,
                "mapped": classnames[m.label] if m.label is not None else None, "how": m.how,
                "similarity": round(m.similarity, 4),
            }) + "\n")
    write_results(run_dir, results)

