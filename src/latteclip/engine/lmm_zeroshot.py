"""The LMM zero-shot baseline (method.md's "LLaVA zero-shot"): ask the multimodal model to pick each test
image's class among the class names, map its answers to classes, and write a run folder whose results.json
sits beside those of the other methods."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

import torch

from latteclip.config import RunConfig, save_config
from latteclip.data import ImageDataset, build_dataset
from latteclip.describe.answers import MappedAnswer, class_choice_format, constrained_text, map_answer, mapping_counts
from latteclip.describe.jobs import image_hashes, image_jobs
from latteclip.describe.prompts import load_prompts
from latteclip.describe.runner import Runner, Summary
from latteclip.describe.settings import DescribeSettings, build_describer
from latteclip.describe.store import DescriptionStore
from latteclip.engine.describing import device_and_model
from latteclip.engine.evaluate import accuracy_report
from latteclip.engine.results import RunResults, write_results
from latteclip.engine.run_folder import check_run_folder
from latteclip.engine.session import dataset_options
from latteclip.errors import LatteclipError

UNMAPPED = "(unmapped)"


def lmm_zero_shot(
    config: RunConfig,
    settings: DescribeSettings,
    prompts_file: str | None = None,
    on_answers: Callable[[Summary, str], None] | None = None,
) -> RunResults | None:
    """Ask for every test image's answer the store lacks, then score them; None while some answers are missing.

    `on_answers` sees the describer's summary and name before scoring (what the command prints).
    """
    started = time.time()
    check_run_folder(config)  # a finished run in the folder is not replaced unasked (--name, --overwrite)
    constrained = _answers_constrained(settings)
    test = build_dataset(config.dataset, config.root, "test", None, dataset_options(config))
    info = test.info
    prompt = load_prompts(info.prompts, settings.prompts, prompts_file).multiple_choice(info.classnames, info.domain)
    device, _ = device_and_model(config, needs_clip=False)
    describer = build_describer(settings, info.domain, None, device)
    store = DescriptionStore(config.store)
    try:
        hashes = image_hashes(test)
        runner = Runner(describer, store, info.name, settings.concurrency, settings.stop_after_failures)
        variant = settings.lmm_answer_format if constrained else ""
        response_format = class_choice_format(info.classnames) if constrained else None
        summary = runner.run(image_jobs(test, hashes, lambda i: prompt, "zeroshot", response_format, variant))
        answers = store.get_texts(
            [h or "" for h in hashes], "zeroshot", model=describer.model, prompt=prompt, variant=variant
        )
    finally:
        describer.close()
        store.close()
    if on_answers is not None:
        on_answers(summary, f"{describer.backend} {describer.model}")
    if not summary.complete:
        return None
    mapped = [
        map_answer(constrained_text(a or "") if constrained else a or "", info.classnames, settings.answer_cutoff)
        for a in answers
    ]
    lmm = {
        "backend": describer.backend,
        "model": describer.model,
        "prompt": prompt,
        "answer_cutoff": settings.answer_cutoff,
        "answer_format": settings.lmm_answer_format,
    }
    results = _scored(config, test, answers, mapped, lmm, started)
    _write_lmm_run(config, settings, results, test, answers, mapped)
    return results


def _answers_constrained(settings: DescribeSettings) -> bool:
    """Whether the answers come as JSON-schema choices; refuses the describers that cannot answer the question."""
    if settings.lmm == "offline":
        raise LatteclipError(
            "the offline describer ignores prompts, so it cannot answer the multiple-choice question: "
            "use --lmm openai or --lmm transformers"
        )
    constrained = settings.lmm_answer_format == "json-schema"
    if constrained and settings.lmm != "openai":
        raise LatteclipError(
            "--lmm-answer-format json-schema sends an OpenAI response_format: use it with --lmm openai"
        )
    return constrained


def _scored(
    config: RunConfig,
    test: ImageDataset,
    answers: list[str | None],
    mapped: list[MappedAnswer],
    lmm: dict,
    started: float,
) -> RunResults:
    """The run's results: the mapped answers scored against the test labels, with how the LMM was asked."""
    classnames = test.info.classnames
    valid = torch.tensor([a is not None for a in answers])
    predictions = torch.tensor([m.label if m.label is not None else len(classnames) for m in mapped])
    # an extra "(unmapped)" class keeps wrong-because-unmapped answers visible in the confusion matrix
    report = accuracy_report(predictions, test.labels, valid, [*classnames, UNMAPPED])
    report["per_class"].pop(UNMAPPED)
    report["confusion"] = report["confusion"][: len(classnames)]
    report["answers"] = mapping_counts([m for m, ok in zip(mapped, valid.tolist()) if ok])
    return {
        "method": "lmm_zeroshot",
        "dataset": config.dataset,
        "model": lmm["model"],
        "pretrained": lmm["backend"],
        "seed": config.seed,
        "steps": 0,
        "top1": report["top1"],
        "test": report,
        "unreadable_train_images": 0,
        "unreadable_test_images": report["unreadable"],
        "timings": {"total_s": time.time() - started},
        "lmm": lmm,
    }


def _write_lmm_run(
    config: RunConfig, settings: DescribeSettings, results: RunResults, test: ImageDataset, answers, mapped
) -> None:
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    described = {k: v for k, v in vars(settings).items() if v is not None}
    save_config(dataclasses.replace(config, describe=described), run_dir / "config.yaml")
    classnames = test.info.classnames
    with open(run_dir / "answers.jsonl", "w", encoding="utf-8") as handle:
        for sample, answer, m in zip(test.samples, answers, mapped):
            handle.write(
                json.dumps(
                    {
                        "image": sample.path,
                        "label": classnames[sample.label],
                        "answer": answer,
                        "mapped": classnames[m.label] if m.label is not None else None,
                        "how": m.how,
                        "similarity": round(m.similarity, 4),
                    }
                )
                + "\n"
            )
    write_results(run_dir, results)
