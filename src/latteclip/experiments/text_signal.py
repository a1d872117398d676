"""ANALYSIS (reads the true labels of the training images): what a run's image descriptions know that its
zero-shot pseudo-labels do not, and what LatteCLIP's class-level prototype update can take from them.

Each text is read the way the model being adapted reads it: its class is the nearest class text of the
pre-trained model (the prototypes' start). LatteCLIP moves a prototype towards the mean of the texts of the
images pseudo-labelled with its class, so the per-image knowledge of the texts reaches the classifier only
where that mean leans towards another class than the pseudo-label. Never used for a choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latteclip.config import RunConfig
from latteclip.describe.jobs import image_hashes
from latteclip.describe.store import DescriptionStore
from latteclip.engine.features import zero_shot_labels
from latteclip.engine.session import open_session
from latteclip.errors import LatteclipError
from latteclip.models import encode_texts

TEXT_BATCH = 512


@dataclass(frozen=True)
class TextSignal:
    """Shares over the training images that have a text and a readable image (0-1)."""

    images: int
    pseudo_label_acc: float  # zero-shot pseudo-label = true class
    text_acc: float  # the text's class = true class
    wrong_labels: int  # images whose pseudo-label is wrong
    text_true_where_wrong: float  # among those: the text names the true class (what the texts could correct)
    text_repeats_wrong: float  # among those: the text names the same wrong class (the describer shares the error)
    classes_nearest_own: (
        int  # pseudo-classes whose mean text is nearest their own class text (the update only reinforces)
    )
    classes: int  # pseudo-classes with at least one image


def text_signal(
    text_features: torch.Tensor, class_features: torch.Tensor, pseudo_labels: torch.Tensor, true_labels: torch.Tensor
) -> TextSignal:
    """The measures of TextSignal from normalised text features [N, d], class text features [C, d] and labels [N]."""
    texts = F.normalize(text_features.float(), dim=-1)
    classes = F.normalize(class_features.float(), dim=-1)
    text_labels = (texts @ classes.t()).argmax(dim=-1)
    wrong = pseudo_labels != true_labels

    def share(hits: torch.Tensor) -> float:
        return hits.float().mean().item() if hits.numel() else float("nan")

    present = pseudo_labels.unique().tolist()
    own = sum(
        int((F.normalize(texts[pseudo_labels == c].mean(dim=0), dim=-1) @ classes.t()).argmax()) == c for c in present
    )
    return TextSignal(
        images=len(pseudo_labels),
        pseudo_label_acc=share(~wrong),
        text_acc=share(text_labels == true_labels),
        wrong_labels=int(wrong.sum()),
        text_true_where_wrong=share(text_labels[wrong] == true_labels[wrong]),
        text_repeats_wrong=share(text_labels[wrong] == pseudo_labels[wrong]),
        classes_nearest_own=own,
        classes=len(present),
    )


@torch.no_grad()
def run_text_signal(config: RunConfig, reads_labels: bool = False) -> TextSignal:
    """TextSignal of the image descriptions the LatteCLIP run `config` reads (READS THE TRUE TRAINING LABELS)."""
    if not reads_labels:
        raise LatteclipError(
            "the description-signal analysis reads the TRUE labels of the training images: ask for it explicitly"
        )
    session = open_session(config)
    method, data = session.method, session.dataset("train")
    pseudo = zero_shot_labels(
        session.loaded,
        method.tokens,
        method.info.classnames,
        method.info.templates[0],
        data,
        session.device,
        config.eval_batch_size,
        config.workers,
    )
    hashes = image_hashes(data, progress=False)
    with DescriptionStore(config.store) as store:
        texts = store.get_texts(hashes, "image", model=getattr(method.options, "described_by", None))
    keep = [i for i, (text, label) in enumerate(zip(texts, pseudo.tolist())) if text is not None and label >= 0]
    if not keep:
        raise LatteclipError(
            f"no training image of {config.dataset} has an image description in {config.store}: run the describe stage "
            "first"
        )
    method.model.eval()
    features = torch.cat(
        [
            encode_texts(
                method.model, method.tokens, [texts[i] for i in keep[start : start + TEXT_BATCH]], session.device
            )
            for start in range(0, len(keep), TEXT_BATCH)
        ]
    )
    true = torch.tensor([data.samples[i].label for i in keep])
    return text_signal(features.cpu(), method.zero_shot_classifier().cpu(), pseudo[keep], true)
