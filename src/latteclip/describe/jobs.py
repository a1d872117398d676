"""The work of a describe run as a list of jobs: one question about one anchor image each.

A job knows its store key (the anchor's content hash, kind, prompt and variant) before any
image is decoded, so the runner can skip what the store already holds without touching pixels;
the picture (the file itself, or a group's collage) is built only when the job is sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image
from tqdm.auto import tqdm

from latteclip.data import CorruptImage, ImageDataset
from latteclip.data.collage import make_collage
from latteclip.describe.backend import Request
from latteclip.describe.store import CLASS_KEY_PREFIX, image_key


@dataclass(eq=False)
class Job:
    image_hash: str
    kind: str
    prompt: str
    image: str  # the anchor's path relative to the dataset root
    build: Callable[[], Request] = field(repr=False)
    variant: str = ""
    meta: dict | None = None
    model_tag: str = ""  # appended to the describer's model name in the store (ANALYSIS_TAG for label-reading groups)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return self.model_tag, self.image_hash, self.kind, self.prompt, self.variant


def image_hashes(dataset: ImageDataset, progress: bool = True) -> list[str | None]:
    """The content hash of every image (None where the file cannot be read)."""
    hashes: list[str | None] = []
    for index in tqdm(range(len(dataset)), desc="hash images", unit="img", leave=False, disable=not progress):
        try:
            hashes.append(image_key(dataset.read_bytes(index)))
        except (OSError, KeyError):
            hashes.append(None)
    return hashes


def load_picture(dataset: ImageDataset, index: int) -> tuple[Image.Image, bytes | None]:
    """The image as training sees it, and its file bytes when those are exactly that image."""
    image, data = dataset.read_image(index)
    if dataset.image_transform is not None:
        return dataset.image_transform(image, index), None
    return image, data


def image_jobs(
    dataset: ImageDataset,
    hashes: Sequence[str | None],
    prompt_for: Callable[[int], str],
    kind: str = "image",
    response_format: dict | None = None,
    variant: str = "",
) -> list[Job]:
    """One job per readable image: the image itself with its prompt (and the answer's constraint, if any;
    constrained answers are stored under their own `variant`, apart from free-text ones)."""

    def builder(index: int, prompt: str) -> Callable[[], Request]:
        def build() -> Request:
            image, data = load_picture(dataset, index)
            return Request(image, prompt, encoded=data, response_format=response_format)

        return build

    jobs = []
    for index, image_hash in enumerate(hashes):
        if image_hash is not None:
            prompt = prompt_for(index)
            jobs.append(Job(image_hash, kind, prompt, dataset.samples[index].path, builder(index, prompt), variant))
    return jobs


def group_variant(member_hashes: Sequence[str]) -> str:
    """Names one exact group (its images in cell order), so another draw is another request."""
    digest = hashlib.sha1("|".join(member_hashes).encode()).hexdigest()[:16]
    return f"group{len(member_hashes)}:{digest}"


def group_jobs(
    dataset: ImageDataset,
    hashes: Sequence[str | None],
    groups: Sequence[list[int] | None],
    prompt_for: Callable[[int], str],
    draw: str,
    model_tag: str = "",
) -> list[Job]:
    """One job per readable anchor: the collage of its group's cells, stored under the anchor.

    `draw` says how the cells were chosen (kept in the row's meta with the cells' paths). An anchor
    without a group (its image could not be decoded for its label) gets a job that fails.
    """

    def builder(cells: list[int], prompt: str) -> Callable[[], Request]:
        def build() -> Request:
            images = [load_picture(dataset, i)[0] for i in cells]
            return Request(make_collage(images), prompt, parts=tuple(images))

        return build

    def unreadable(index: int) -> Callable[[], Request]:
        def build() -> Request:
            raise CorruptImage(f"{dataset.where(index)} could not be read when zero-shot labels were computed")

        return build

    jobs = []
    for anchor, cells in enumerate(groups):
        if hashes[anchor] is None:
            continue
        if cells is None:  # no label, so no group: reported as a failure rather than left out
            jobs.append(
                Job(
                    hashes[anchor],
                    "group",
                    prompt_for(anchor),
                    dataset.samples[anchor].path,
                    unreadable(anchor),
                    model_tag=model_tag,
                )
            )
            continue
        prompt = prompt_for(anchor)
        meta = {"cells": [dataset.samples[i].path for i in cells], "group_size": len(cells), "draw": draw}
        variant = group_variant([hashes[i] for i in cells])
        jobs.append(
            Job(
                hashes[anchor],
                "group",
                prompt,
                dataset.samples[anchor].path,
                builder(cells, prompt),
                variant,
                meta,
                model_tag,
            )
        )
    return jobs


def class_key(classname: str, question: int) -> str:
    """The store key of one description of a class name (kind `classes`): by name and question number, since no
    image is asked about (a description set holds one row per key and kind)."""
    return f"{CLASS_KEY_PREFIX}{classname}:{question}"


def class_jobs(classnames: Sequence[str], questions_for: Callable[[str], list[str]]) -> list[Job]:
    """One text-only job per class name and question: the answer is one description of that class."""

    def builder(question: str) -> Callable[[], Request]:
        return lambda: Request(None, question)

    return [
        Job(class_key(name, number), "classes", question, name, builder(question))
        for name in dict.fromkeys(classnames)
        for number, question in enumerate(questions_for(name))
    ]
