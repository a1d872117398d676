"""Label-free choice among candidate settings (`adapt --choose`): a held-back share, each candidate's scores on it, the
pick, and a verdict on whether the adaptation can be trusted.

A seeded share of the user's images (drawn by position, no label read) is held back: every candidate trains on the
rest, and is scored (engine.validation) on images it never trained on, so a candidate that memorised its pseudo-labels
gains nothing. The chosen candidate is NOT retrained on every image: the model scored is the model delivered, and a
retrained one would be another model whose scores nobody measured; its predictions still cover every image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latteclip.config import FIELD_NAMES, FIELD_TYPES, RunConfig
from latteclip.data import ImageDataset, build_dataset
from latteclip.data.subsets import held_back_positions
from latteclip.describe.jobs import image_hashes
from latteclip.describe.store import DescriptionStore
from latteclip.engine import validation
from latteclip.engine.checkpoint import load_final_checkpoint
from latteclip.engine.features import extract_features
from latteclip.engine.predict import class_probabilities
from latteclip.engine.results import read_results, write_results
from latteclip.engine.score_names import SCORE_NAMES, compared_with_zero_shot, needs_describer
from latteclip.engine.session import dataset_options, method_from_checkpoint, pick_device
from latteclip.errors import LatteclipError
from latteclip.methods.base import Method
from latteclip.models.text import encode_texts
from latteclip.paths import atomic_write_bytes
from latteclip.values import coerce

HOLDOUT_SHARE = 0.1  # the share of the images held back for scoring: a tenth costs the training little
DEFAULT_LRS = (1e-7, 1e-6, 1e-5)  # the candidates of `adapt` without --choose: the paper's rate and two larger ones
SIZED_EPOCHS, SIZED_MIN_STEPS, SIZED_MAX_STEPS = 20, 50, 2000  # a custom folder's schedule, in steps that fit its size
CANDIDATES_AGREE = 0.8  # below this mean pairwise agreement of the candidates' held-back predictions, they disagree
FEW_HELD_BACK = 50  # fewer held-back images than this: a few images more or less in one class move every score
NOT_CHOSEN_BY = frozenset(
    {
        "dataset",
        "root",
        "output",
        "name",
        "method",
        "store",
        "resume",
        "overwrite",
        "describe",
        "classnames",
        "method_options",
    }
)


@dataclass(frozen=True)
class ImageLists:
    """The user's images cut in two list files (`--root FILE.txt` of the `images` dataset): training and held back."""

    train: Path
    held: Path
    train_count: int
    held_count: int


def split_images(config: RunConfig, folder: Path, share: float = HOLDOUT_SHARE) -> ImageLists:
    """Write images-train.txt and images-held.txt (absolute paths) into `folder`; seeded by the run's seed."""
    if not 0 < share < 1:
        raise LatteclipError(f"--holdout must be a share between 0 and 1 (exclusive), not {share}")
    images = build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
    if len(images) < 2:
        raise LatteclipError(f"{config.root} holds {len(images)} image: a held-back share needs at least 2")
    paths = [str((Path(images.source.location) / s.path).resolve()) for s in images.samples]
    held = set(held_back_positions(len(paths), share, config.seed))
    lists = ImageLists(folder / "images-train.txt", folder / "images-held.txt", len(paths) - len(held), len(held))
    for path, chosen in (
        (lists.train, [p for i, p in enumerate(paths) if i not in held]),
        (lists.held, [p for i, p in enumerate(paths) if i in held]),
    ):
        text = "".join(f"{p}\n" for p in chosen)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_bytes(path, text.encode())
    return lists


def sized_schedule(images: int) -> dict[str, int]:
    """Batch and steps for `images` training images: SIZED_EPOCHS passes, in SIZED_MIN_STEPS..SIZED_MAX_STEPS steps,
    batches of a quarter of the images (8 to 512), warm-up a tenth; not the paper's 50 epochs of 512 at any size."""
    batch = min(512, max(8, 2 ** int(math.log2(max(images // 4, 1)))))
    steps_per_epoch = max(1, images // batch)
    steps = min(SIZED_MAX_STEPS, max(SIZED_MIN_STEPS, SIZED_EPOCHS * steps_per_epoch))
    return {
        "batch_size": batch,
        "max_steps": steps,
        "epochs": math.ceil(steps / steps_per_epoch),
        "warmup_steps": steps // 10,
    }


def candidate_grid(choices: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values given per option (`--choose lr=1e-7,1e-6 --choose max_steps=100,400`)."""
    for key, values in choices.items():
        if key not in FIELD_NAMES or key in NOT_CHOSEN_BY:
            raise LatteclipError(f"--choose {key}: not an option a candidate can vary (e.g. lr, max_steps, batch_size)")
        if not values:
            raise LatteclipError(f"--choose {key}= names no value: give them as {key}=A,B,C")
    typed = {
        key: [coerce(FIELD_TYPES[key], value, f"--choose {key}") for value in values] for key, values in choices.items()
    }
    return [dict(zip(typed, combination)) for combination in itertools.product(*typed.values())]


def candidate_config(config: RunConfig, options: Mapping[str, Any], lists: ImageLists) -> RunConfig:
    """A candidate's run: the adapted run's config on the training list, with `options`, in its own folder."""
    name = "-".join([config.method, *(f"{key}={value}" for key, value in options.items())])
    return dataclasses.replace(config, root=str(lists.train), name=name, **options)


def held_probabilities(method: Method, held: ImageDataset, config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (softmax of logit scale times cosine) of the held-back images, and the readable mask."""
    method.model.eval()
    held = held.with_transform(method.loaded.eval_transform())
    with torch.no_grad():
        features, valid = extract_features(
            method.encode_images, held, method.device, config.eval_batch_size, config.workers, desc="score"
        )
        probs = class_probabilities(features, method.classifier().cpu(), method.model.logit_scale.cpu())
    return probs, valid


class HeldImages:
    """Held-back images, transformed on demand: MixVal indexes them by a tensor of positions, a few hundred at most."""

    def __init__(self, held: ImageDataset, method: Method, positions: list[int]):
        self.data = held.with_transform(method.loaded.eval_transform())
        self.positions = positions

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.data[self.positions[i]]["image"] for i in indices.tolist()])


def mixval_of(method: Method, held: ImageDataset, probs: torch.Tensor, positions: list[int], seed: int) -> dict:
    """MixVal with the candidate's own forward pass on the mixed images."""
    classifier, scale = method.classifier().cpu(), method.model.logit_scale.cpu()

    def predict(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = method.encode_images(images.to(method.device)).float().cpu()
        return class_probabilities(features, classifier, scale)

    return validation.mixval(HeldImages(held, method, positions), probs, predict, seed)


def scores_of(probs: torch.Tensor, reference: Mapping[str, torch.Tensor | None], mixval: dict) -> dict[str, float]:
    """Every score of engine.validation for one candidate (higher is better); agreements only where a reference is."""
    scores = {
        "prediction_balance": validation.prediction_balance(probs),
        "neg_entropy": validation.neg_entropy(probs),
        "information_maximization": validation.information_maximization(probs),
        "soft_neighborhood_density": validation.soft_neighborhood_density(probs),
        **mixval,
    }
    for name, answers in reference.items():
        if answers is not None:
            scores[name] = validation.agreement(probs, answers)
    return scores


# --- scoring a finished run on the held-back images --------------------------------------------------------------
@dataclass(frozen=True)
class HeldBack:
    """The held-back images and what every candidate is compared with on them (computed once)."""

    images: ImageDataset
    digest: str  # of the held-back list: scores stored for another list are not reused
    zero_shot: torch.Tensor  # the zero-shot model's class of each image (-1: unreadable)
    describer: torch.Tensor | None  # the describer's class of each image (-1: none), None when nothing was described


def load_method(run_dir: Path, config: RunConfig) -> Method:
    return method_from_checkpoint(load_final_checkpoint(run_dir / "final.pt"), pick_device(config.device))


def held_back(config: RunConfig, lists: ImageLists, zero_shot_dir: Path, described: bool) -> HeldBack:
    """The held-back images, the zero-shot model's answers on them and, when the images were described, the
    describer's (`describer_answers`)."""
    images = build_dataset(config.dataset, str(lists.held), "train", None, dataset_options(config))
    digest = hashlib.sha256(lists.held.read_bytes()).hexdigest()[:16]
    return held_back_of(images, digest, zero_shot_dir, config, described)


def held_back_of(
    images: ImageDataset, digest: str, zero_shot_dir: Path, config: RunConfig, described: bool
) -> HeldBack:
    """`images` (their labels unread) with the answers of the zero-shot run in `zero_shot_dir` and, when `described`,
    of the describer (texts in `config.store`)."""
    zero_shot = load_method(zero_shot_dir, config)
    probs, valid = held_probabilities(zero_shot, images, config)
    answers = torch.where(valid, probs.argmax(dim=-1), -1)
    return HeldBack(images, digest, answers, describer_answers(zero_shot, images, config) if described else None)


def describer_answers(zero_shot: Method, images: ImageDataset, config: RunConfig) -> torch.Tensor:
    """The describer's answer for each image: the class whose zero-shot classifier text its image description (the LMM's
    words for the image, what LatteCLIP trains on) is nearest to in the frozen CLIP text space; -1 without one.

    LatteCLIP's describer names no class, so this is the closest reading of its description as a class.
    """
    with DescriptionStore(config.store) as store:
        texts = store.get_texts(image_hashes(images, progress=False), "image")
    answered = [i for i, text in enumerate(texts) if text]
    answers = torch.full((len(texts),), -1, dtype=torch.long)
    if answered:
        with torch.no_grad():
            features = encode_texts(zero_shot.model, zero_shot.tokens, [texts[i] for i in answered], zero_shot.device)
            nearest = (features.float().cpu() @ zero_shot.classifier().float().cpu().t()).argmax(dim=-1)
        answers[answered] = nearest
    return answers


def references_digest(held: HeldBack) -> str:
    """What the agreement scores compare with: zero-shot's answer and the describer's (or none) for each image."""
    answers = {
        "zero_shot": held.zero_shot.tolist(),
        "describer": None if held.describer is None else held.describer.tolist(),
    }
    return hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]


def score_run(run_dir: Path, config: RunConfig, held: HeldBack) -> dict[str, Any]:
    """The run's scores on the held-back images, stored in its results.json (`label_free_scores`, and `holdout`: the
    list scored and each image's predicted class); read back only when stored for the same list and the same answers
    to agree with (zero-shot's, and the describer's or none: an adapt rerun with another --lmm, or with one where the
    first had none, scores the reused candidates again)."""
    results = read_results(run_dir)
    listed = {"images": len(held.images), "digest": held.digest, "references": references_digest(held)}
    stored = results.get("holdout") or {}
    if "label_free_scores" in results and {k: stored.get(k) for k in listed} == listed:
        return results
    method = load_method(run_dir, config)
    probs, valid = held_probabilities(method, held.images, config)
    positions = valid.nonzero().flatten().tolist()
    if not positions:
        raise LatteclipError(
            f"none of the {len(held.images)} held-back images could be read; check the images under {config.root}"
        )
    readable = probs[positions]
    references = {
        "zero_shot_agreement": held.zero_shot[positions],
        "describer_agreement": held.describer[positions] if held.describer is not None else None,
    }
    mixval = mixval_of(method, held.images, readable, positions, config.seed)
    results["label_free_scores"] = scores_of(readable, references, mixval)
    results["holdout"] = {
        **listed,
        "classes": list(method.info.classnames),
        "predictions": torch.where(valid, probs.argmax(dim=-1), -1).tolist(),
    }
    write_results(run_dir, results)
    return results


# --- the choice and the verdict ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    options: dict[str, Any]
    config: RunConfig
    results: dict[str, Any]  # its results.json, scores included

    @property
    def scores(self) -> dict[str, float]:
        return validation.with_combined(self.results["label_free_scores"])

    @property
    def predictions(self) -> list[int]:
        return self.results["holdout"]["predictions"]


def check_score(name: str, described: bool) -> None:
    """Refuse, before any training, a --choose-by that no candidate will have."""
    known = [score for score in SCORE_NAMES if described or not needs_describer(score)]
    if name not in known:
        raise LatteclipError(f"--choose-by {name}: not a label-free score of this run; use one of {', '.join(known)}")


def first_best(values: Sequence[float]) -> int:
    """The index of the highest value, a tie going to the earlier one: how every choice of a candidate breaks ties."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def pick(candidates: Sequence[Candidate], score: str) -> Candidate:
    """The best candidate by `score`; a tie goes to the earlier candidate (the order given)."""
    return candidates[first_best([c.scores[score] for c in candidates])]


def mean_agreement(predictions: Sequence[Sequence[int]]) -> float | None:
    """Mean share of held-back images on which two candidates predict the same class, over every pair."""
    pairs = list(itertools.combinations(predictions, 2))
    if not pairs:
        return None
    return sum(sum(a == b for a, b in zip(x, y)) / max(len(x), 1) for x, y in pairs) / len(pairs)


def concentrated_share(classes: int) -> float:
    """A top-class share this high means a skewed zero-shot start: three times an even share, at most 90%."""
    return min(0.9, 3 / classes)


def verdict(zero_shot: Mapping[str, Any], candidates: Sequence[Candidate], chosen: Candidate, score: str) -> dict:
    """Label-free signals that the adaptation cannot be trusted, and which predictions to use.

    Zero-shot's own predictions on the held-back images concentrated on few classes (its pseudo-labels teach that
    skew), every candidate below zero-shot by `score` (nothing adapted looks better than not adapting; compared
    without the agreements, `compared_with_zero_shot`), candidates disagreeing with each other (the choice is a gamble).
    """
    signals = []
    top_class, top_share, where = zero_shot_concentration(zero_shot)
    classes = len(zero_shot["holdout"]["classes"])
    if top_share >= concentrated_share(classes):
        signals.append(
            f"zero-shot puts {100 * top_share:.1f}% of {where} in one class ({top_class}) of {classes}: its "
            "pseudo-labels start skewed"
        )
    held = len(zero_shot["holdout"]["predictions"])
    if held < FEW_HELD_BACK:
        signals.append(
            f"only {held} held-back images score the candidates: a few images decide the choice (hold back "
            "more with --holdout, or add images)"
        )
    compared = compared_with_zero_shot(score)
    zero_shot_score = validation.with_combined(zero_shot["label_free_scores"]).get(compared, 0.0)
    below = compared is not None and all(c.scores[compared] < zero_shot_score for c in candidates)
    if below:  # the best by `compared`: not always the one chosen, when `score` combines it with an agreement
        signals.append(
            f"every candidate scores below zero-shot by {compared} "
            f"({zero_shot_score:.4f}; best {max(c.scores[compared] for c in candidates):.4f})"
        )
    agree = mean_agreement([c.predictions for c in candidates])
    if agree is not None and agree < CANDIDATES_AGREE:
        signals.append(
            f"the candidates agree on only {100 * agree:.1f}% of the held-back images: the settings decide "
            "much and the score may pick the wrong one"
        )
    use = "zero-shot" if below else "adapted"
    why = (
        f"no candidate looks better than zero-shot by {compared}: adapting did not help by the only measure "
        "available without labels"
        if below
        else f"a candidate scores at least as well as zero-shot by {compared}"
        if compared is not None
        else f"{score} cannot compare with zero-shot; the adapted model is the one chosen"
    )
    if compared is not None and not below and chosen.scores[compared] < zero_shot_score:
        why += f" (not the one {score} chose: {chosen.scores[compared]:.4f} against zero-shot's {zero_shot_score:.4f})"
    if signals and not below:
        why += "; check some of its predictions by hand before relying on them"
    return {
        "trust": not signals,
        "use": use,
        "why": why,
        "signals": signals,
        "zero_shot_top_class_share": top_share,
        "candidate_agreement": agree,
    }


def zero_shot_concentration(zero_shot: Mapping[str, Any]) -> tuple[str, float, str]:
    """Zero-shot's most predicted class, its share and of which images: every image when the run has label-free
    diagnostics (the more images, the surer), else the held-back ones (a run measured on labelled images)."""
    diagnostics = zero_shot.get("diagnostics")
    if diagnostics:
        return diagnostics["zero_shot"]["top_class"], diagnostics["zero_shot"]["top_class_share"], "the images"
    answers = [p for p in zero_shot["holdout"]["predictions"] if p >= 0]
    top = max(range(len(zero_shot["holdout"]["classes"])), key=answers.count)
    return zero_shot["holdout"]["classes"][top], answers.count(top) / max(len(answers), 1), "the held-back images"


def choice_record(score: str, candidates: Sequence[Candidate], chosen: Candidate) -> dict[str, Any]:
    """results.json's `label_free_choice` of the adapt folder (these keys, so that scripts can read it)."""
    return {
        "score": score,
        "candidates": [{"options": c.options, "scores": c.scores} for c in candidates],
        "chosen": {"options": chosen.options, "scores": chosen.scores, "run_dir": str(chosen.config.run_dir)},
    }
