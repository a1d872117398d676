"""Top-k class predictions of a trained method for image files, the engine side of `latteclip predict`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from latteclip.config import Inference
from latteclip.data import CorruptImage
from latteclip.data.datasets import decode_image
from latteclip.data.sources import IMAGE_EXTENSIONS
from latteclip.engine.features import extract_features
from latteclip.errors import LatteclipError
from latteclip.methods.base import Method


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as named (any extension), and the image files under each folder (recursive, sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            raise LatteclipError(f"{raw} does not exist: pass image files or folders of images")
    if not found:
        raise LatteclipError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {', '.join(map(str, paths))}"
        )
    return found


class ImageFiles(Dataset):
    """Image files with the evaluation transform; unreadable ones come back marked, as in the datasets."""

    def __init__(self, files: Sequence[Path], transform: Callable):
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        try:
            image = decode_image(self.files[index].read_bytes(), str(self.files[index]))
        except (CorruptImage, OSError):
            return {"index": index, "corrupt": True}
        return {"image": self.transform(image), "label": -1, "index": index}


@dataclass
class Prediction:
    path: Path
    classes: list[str]  # best first; empty when the file could not be read
    scores: list[float]  # softmax over all classes of logit_scale * cosine, best first

    @property
    def readable(self) -> bool:
        return bool(self.classes)


def class_probabilities(
    image_features: torch.Tensor, classifier: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's class probabilities: softmax over classes of the scaled cosine similarities."""
    return (logit_scale.exp() * image_features.float() @ classifier.float().t()).softmax(dim=-1)


@torch.no_grad()
def predict_files(method: Method, files: Sequence[Path], top_k: int, inference: Inference) -> list[Prediction]:
    """Top-k classes of each file, in the order given; unreadable files get an empty prediction.

    On the method's device with the batch size and workers of `inference`, in fp32 (scores for people to read).
    """
    loaded = method.loaded
    data = ImageFiles(files, loaded.eval_transform())
    method.model.eval()
    features, valid = extract_features(
        method.encode_images, data, method.device, inference.batch_size, inference.workers, desc="predict"
    )
    readable = valid.nonzero().flatten().tolist()
    names = method.info.classnames
    results = [Prediction(path, [], []) for path in data.files]
    if not readable:
        return results
    probs = class_probabilities(features[readable], method.classifier().cpu(), method.model.logit_scale.cpu())
    top = probs.topk(min(top_k, method.info.num_classes), dim=-1)
    for row, index in enumerate(readable):
        results[index].classes = [names[c] for c in top.indices[row].tolist()]
        results[index].scores = top.values[row].tolist()
    return results


# --- predictions as text (`latteclip predict --format`, adapt's predictions.csv) -----------------------------------
def format_table(predictions: Sequence[Prediction], top_k: int) -> str:
    """Aligned columns: the image, then class and score for each rank."""
    header = ["image"] + [cell for rank in range(1, top_k + 1) for cell in (f"top-{rank}", "score")]
    rows = [header]
    for p in predictions:
        if p.readable:
            cells = [cell for name, score in zip(p.classes, p.scores) for cell in (name, f"{score:.4f}")]
            rows.append([str(p.path), *cells])
        else:
            rows.append([str(p.path), "(unreadable: skipped)"])
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows) + "\n"


def format_csv(predictions: Sequence[Prediction]) -> str:
    """One row per image: path, class, score, then class_2, score_2, ... for the rest of the top-k.

    An unreadable image keeps its row, with the class and scores left empty.
    """
    top_k = max((len(p.classes) for p in predictions), default=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    others = [f"{kind}_{rank}" for rank in range(2, top_k + 1) for kind in ("class", "score")]
    writer.writerow(["path", "class", "score", *others])
    for p in predictions:
        cells = [cell for name, score in zip(p.classes, p.scores) for cell in (name, f"{score:.6f}")]
        writer.writerow([str(p.path), *cells, *[""] * (2 * top_k - len(cells))])
    return buffer.getvalue()


def format_jsonl(predictions: Sequence[Prediction]) -> str:
    """One object per readable image: {"path", "top": [{"class", "score"}, ...]}."""
    lines = [
        {"path": str(p.path), "top": [{"class": n, "score": round(s, 6)} for n, s in zip(p.classes, p.scores)]}
        for p in predictions
        if p.readable
    ]
    return "".join(json.dumps(line) + "\n" for line in lines)
