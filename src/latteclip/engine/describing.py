"""The description stage as a library call (method.md 1.2): describe the training images of a run's dataset.

It sits in the engine because groups are drawn by the zero-shot labels of the engine's cached feature
pass (the same cache training reads). `latteclip describe` and `latteclip adapt` both call it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

import torch

from latteclip.config import RunConfig
from latteclip.data import DatasetInfo, ImageDataset, build_dataset
from latteclip.describe.batch import read_results, write_requests
from latteclip.describe.clip_vocab import compose_at_random, read_vocabulary
from latteclip.describe.groups import draw_pseudo_label_groups, draw_true_class_groups
from latteclip.describe.jobs import Job, class_jobs, group_jobs, image_hashes, image_jobs
from latteclip.describe.prompts import Prompts, load_prompts
from latteclip.describe.runner import Runner, Summary
from latteclip.describe.settings import DescribeSettings, build_describer
from latteclip.describe.store import ANALYSIS_TAG, DescriptionStore, image_key
from latteclip.engine.features import zero_shot_labels
from latteclip.engine.session import dataset_options, pick_device, seed_everything
from latteclip.errors import LatteclipError
from latteclip.models import LoadedModel, TokenCache, load_clip


def device_and_model(config: RunConfig, needs_clip: bool) -> tuple[torch.device, LoadedModel | None]:
    """The run's device, and its CLIP model in eval mode when the stage needs one (labels, offline describer)."""
    device = pick_device(config.device)
    seed_everything(config.seed)  # random weights (tests, demo) come out as in a training session with this seed
    loaded = load_clip(config.model, config.pretrained, device) if needs_clip else None
    if loaded is not None:
        loaded.model.eval()
    return device, loaded


def pseudo_labels(config: RunConfig, train: ImageDataset, loaded: LoadedModel, device: torch.device) -> list[int]:
    """c_zs of every training image, through the engine's cache (training reads the same labels)."""
    dataset = train.with_transform(loaded.eval_transform())
    info = dataset.info
    return zero_shot_labels(
        loaded,
        TokenCache(loaded.tokenizer),
        info.classnames,
        info.templates[0],
        dataset,
        device,
        config.eval_batch_size,
        config.workers,
    ).tolist()


def check_analysis(settings: DescribeSettings, train: ImageDataset) -> bool:
    """Whether groups are drawn from the true labels (analysis mode); refused on data without labels."""
    analysis = "group" in settings.kinds and settings.true_class_members is not None
    if analysis and not train.info.labelled:
        raise LatteclipError(
            f"--true-class-members draws groups from the true labels and {train.info.name} has none (unlabeled images)"
        )
    return analysis


def draw_groups(
    config: RunConfig,
    settings: DescribeSettings,
    train: ImageDataset,
    hashes: list[str | None],
    labels: list[int] | None,
    model: str,
    analysis: bool,
) -> tuple[list[list[int] | None], str]:
    """Each anchor's group cells and how they were drawn: by zero-shot label, or (analysis) by the TRUE labels."""
    if not analysis:
        groups = draw_pseudo_label_groups(labels, settings.group_size, config.seed, settings.group_draw)
        drawn_by = f"{config.model} {config.pretrained or 'random'}"
        return groups, f"{settings.group_draw} draw by zero-shot label of {drawn_by}"
    print(
        f"ANALYSIS MODE: groups hold {settings.true_class_members} of {settings.group_size} images of the "
        f"anchor's TRUE class; these groups read the labels and are stored as model '{model}{ANALYSIS_TAG}', "
        "which label-free training reads only when named (--described-by)"
    )
    true_labels = [s.label if h is not None else -1 for s, h in zip(train.samples, hashes)]  # unread: no group
    groups = draw_true_class_groups(true_labels, settings.group_size, settings.true_class_members, config.seed)
    return groups, f"true class, {settings.true_class_members} of {settings.group_size} (analysis, reads labels)"


def describe_training_images(
    config: RunConfig,
    settings: DescribeSettings,
    prompts: Prompts,
    train: ImageDataset,
    hashes: list[str | None],
    store: DescriptionStore,
    batch_out: str | None = None,
    batch_in: str | Sequence[str] | None = None,
) -> tuple[Summary, str]:
    """Ask the describer for every description of `settings.kinds` the store lacks; the summary and the describer's
    name.
    With `--lmm batch`, write them to `batch_out` (`settings.batch_shards` files) or store the answers of `batch_in`.

    Groups drawn from the TRUE labels (`settings.true_class_members`, analysis) are stored under the model name
    plus ANALYSIS_TAG, so that training reads them only when asked for that model by name.
    """
    info = train.info
    wants_groups = "group" in settings.kinds
    analysis = check_analysis(settings, train)
    # classes: text-only questions, which name no image's label
    names_label = {k: prompts.names_label(k, settings.with_label) for k in settings.kinds if k != "classes"}
    needs_labels = any(names_label.values()) or (wants_groups and not analysis)
    own_clip = settings.lmm == "offline" and not settings.describer_model  # it ranks with the adapted model
    device, loaded = device_and_model(config, needs_clip=needs_labels or own_clip)
    # the server is asked (reachable, key, model) before the zero-shot pass, so a wrong setting costs nothing
    describer = build_describer(settings, info.domain, loaded, device, info.name) if settings.lmm != "batch" else None
    model = describer.model if describer is not None else settings.lmm_model or ""
    labels = pseudo_labels(config, train, loaded, device) if needs_labels else None
    jobs = stage_jobs(config, settings, prompts, train, hashes, labels, names_label, model, analysis)
    backend = describer.backend if describer else "batch"
    store.record_set(
        info.name,
        description_contract(config, settings, backend, model, jobs, analysis),
        [(j.image_hash, j.kind, j.prompt, model + j.model_tag, j.variant) for j in jobs],
    )
    if describer is None:
        return _batch_files(jobs, store, model, info.name, batch_out, batch_in, settings.batch_shards)
    runner = Runner(describer, store, info.name, settings.concurrency, settings.stop_after_failures)
    try:
        summary = runner.run(jobs)
    finally:
        describer.close()
    return summary, f"{describer.backend} {describer.model}"


def stage_jobs(
    config: RunConfig,
    settings: DescribeSettings,
    prompts: Prompts,
    train: ImageDataset,
    hashes: list[str | None],
    labels: list[int] | None,
    names_label: dict[str, bool],
    model: str,
    analysis: bool,
) -> list[Job]:
    """The stage's questions: about each image, each anchor's group (drawn here), and each class name (text only)."""
    info = train.info

    def prompt_for(kind: str) -> Callable[[int], str]:
        def prompt(index: int) -> str:
            # an image whose label could not be computed was not decoded: its job fails whatever the prompt
            label = (info.classnames[labels[index]] if labels[index] >= 0 else "") if names_label[kind] else None
            return prompts.description(kind, info.domain, label, settings.with_label)

        return prompt

    jobs: list[Job] = []
    if "image" in settings.kinds:
        jobs += image_jobs(train, hashes, prompt_for("image"))
    if "group" in settings.kinds:
        groups, draw = draw_groups(config, settings, train, hashes, labels, model, analysis)
        jobs += group_jobs(train, hashes, groups, prompt_for("group"), draw, ANALYSIS_TAG if analysis else "")
    if "classes" in settings.kinds:
        jobs += class_jobs(info.classnames, lambda name: prompts.class_questions(name, info.domain))
    return jobs


def description_contract(
    config: RunConfig, settings: DescribeSettings, backend: str, model: str, jobs: list[Job], analysis: bool
) -> dict:
    """What identifies how a stage's texts were made, stored with them (DescriptionStore.record_set) and read back
    by the method that uses them: describer, prompts, group size and draw, the seed and zero-shot model of the draw,
    and the share of the training images (only below 1, so that stages recorded before shares existed keep their
    names): a share draws its groups among its own images."""
    share = {"train_fraction": config.train_fraction} if config.train_fraction != 1.0 else {}
    return {
        **share,
        "describer": f"{backend} {model}",
        "kinds": list(settings.kinds),
        "prompts": {kind: sorted({job.prompt for job in jobs if job.kind == kind}) for kind in settings.kinds},
        "with_label": settings.with_label,
        "group_size": settings.group_size,
        "group_draw": f"true class, {settings.true_class_members} of the group" if analysis else settings.group_draw,
        "seed": config.seed,
        "zero_shot_labels": f"{config.model} {config.pretrained or 'random'}",
        "analysis": analysis,
    }


def describe_run(config: RunConfig, settings: DescribeSettings, prompts_file: str | None = None) -> tuple[Summary, str]:
    """The description stage for the training images `config` trains on, into the store it reads; one call.

    Prompts: the bundled ones, the dataset's own, the settings' `prompts`, then `prompts_file`. The store skips
    what it holds, so a repeated call only hashes the images.
    """
    train = build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
    prompts = load_prompts(train.info.prompts, settings.prompts, prompts_file)
    hashes = image_hashes(train) if set(settings.kinds) - {"classes"} else []  # class texts ask about no image
    with DescriptionStore(config.store) as store:
        return describe_training_images(config, settings, prompts, train, hashes, store)


def image_hasher(dataset: ImageDataset, hashes: list[str | None]) -> Callable[[str], str | None]:
    """Path under the dataset root -> content hash, for imported lines that name images by path."""
    known = {s.path: h for s, h in zip(dataset.samples, hashes) if h is not None}

    def hash_of(path: str) -> str | None:
        if path in known:
            return known[path]
        parts = PurePosixPath(path.replace("\\", "/"))
        if parts.is_absolute() or ".." in parts.parts:
            raise LatteclipError(
                f"imported image path {path} is not inside the dataset root: give a path relative to --root"
            )
        try:
            return image_key(dataset.source.read(path))
        except (OSError, KeyError):
            return None

    return hash_of


def true_class_descriptions(
    config: RunConfig, share: float, store: DescriptionStore, model: str, reads_labels: bool = False
) -> int:
    """ANALYSIS ONLY, READS THE TRUE LABELS: image and group texts naming the true class for a share of the images.

    For the sweep of what LatteCLIP gains from its texts as they get better: each training image's text
    names its true class with probability `share` and another class drawn at random otherwise (seeded by
    the run's seed and the share). A text is the class's first template followed by a sentence of the
    dataset's vocabulary made of that class's nouns and attributes (when the dataset has them). Both
    kinds are stored under `model` + ANALYSIS_TAG, which label-free training reads only when named.
    Returns the number of images described.
    """
    if not reads_labels:
        raise LatteclipError(
            "true-class descriptions read the TRUE labels of the training images (analysis only): "
            "ask for them explicitly (reads_labels=True; the benchmark's --reads-labels)"
        )
    if not 0.0 <= share <= 1.0:
        raise LatteclipError(f"the share of true-class descriptions must be between 0 and 1, not {share}")
    train = build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
    info = train.info
    if not info.labelled:
        raise LatteclipError(f"true-class descriptions need labels and {info.name} has none (unlabeled images)")
    vocab = read_vocabulary(None, info.name)[0] if info.class_attributes else None
    rng = random.Random(f"{config.seed}:{share}")
    tagged = model + ANALYSIS_TAG
    rows = []
    for sample, image_hash in zip(train.samples, image_hashes(train, progress=False)):
        if image_hash is None:
            continue
        for kind in ("image", "group"):
            text = _true_class_text(info, vocab, sample.label, share, rng)
            rows.append((image_hash, kind, "", "analysis", tagged, text, sample.path, info.name, {"share": share}, ""))
    store.put_many(rows)
    contract = {
        "describer": "analysis true-class texts",
        "kinds": ["image", "group"],
        "share": share,
        "seed": config.seed,
        "analysis": True,
    }
    store.record_set(info.name, contract, [(row[0], row[1], row[2], row[4], row[9]) for row in rows])
    return len(rows) // 2


def _true_class_text(info: DatasetInfo, vocab: dict | None, label: int, share: float, rng: random.Random) -> str:
    """A text naming class `label` with probability `share`, another class drawn at random otherwise."""
    if rng.random() >= share:
        label = rng.choice([c for c in range(info.num_classes) if c != label])
    name = info.classnames[label]
    text = info.templates[0].format(name)
    if vocab is not None:
        text += " " + compose_at_random(vocab, info.class_attributes[name], info.domain, rng)
    return text


def _batch_files(
    jobs: list[Job],
    store: DescriptionStore,
    model: str,
    dataset_name: str,
    batch_out: str | None,
    batch_in: str | Sequence[str] | None,
    shards: int = 1,
) -> tuple[Summary, str]:
    """--batch-out: the requests the store lacks, as OpenAI Batch files (`shards` of them); --batch-in: the answers of
    results files."""
    if batch_out:
        summary, files = write_requests(jobs, store, model, batch_out, shards=shards)
        if len(files) == 1:
            print(
                f"wrote {files[0][1]} requests to {files[0][0]}: run them (e.g. vllm run-batch -i {files[0][0]} -o "
                f"RESULTS.jsonl --model {model}), then store the answers with the same command and --batch-in "
                "RESULTS.jsonl"
            )
        elif files:
            sizes = [n for _, n in files]
            print(
                f"wrote {sum(sizes)} requests to {len(files)} files in {files[0][0].parent}, {files[0][0].name} to "
                f"{files[-1][0].name} ({min(sizes)} to {max(sizes)} requests each): run each on a node of its own "
                f"(e.g. vllm run-batch -i {files[0][0]} -o results-1.jsonl --model {model}), then store all the "
                "answers with the same command and --batch-in 'results-*.jsonl'"
            )
        else:
            print("nothing to write: the store holds an answer to every request")
        return summary, f"batch file for {model}"
    if not batch_in:
        raise LatteclipError("--lmm batch needs --batch-out FILE.jsonl or --batch-in RESULTS.jsonl")
    summary, unmatched = read_results(jobs, store, model, batch_in, dataset_name)
    if unmatched:
        files = batch_in if isinstance(batch_in, str) else ", ".join(batch_in)
        print(
            f"{unmatched} lines of {files} match no request still missing (already stored, or another dataset, "
            "prompt or model): left as they are"
        )
    return summary, f"batch results of {model}"
