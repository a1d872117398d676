"""FLYP + pseudo-labels and the supervised oracle (method.md section 2).

Both train both towers with the contrastive loss between each image and its class text (the
dataset's first template). FLYP + pseudo-labels takes the class from the zero-shot model, fixed
before training (`--pseudo-labels zero-shot`, what the LatteCLIP authors' code ran as this
baseline) or from the current model, recomputed at every step (`current`, the paper's text); the
oracle takes the true label and is the only method that reads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latteclip.errors import LatteclipError
from latteclip.methods.base import Method, StepResult
from latteclip.methods.options import FlypOptions, NoOptions
from latteclip.models import encode_texts
from latteclip.models.losses import contrastive_loss
from latteclip.models.prototypes import full_precision

PSEUDO_LABEL_SOURCES = ("zero-shot", "current")


class FlypPseudoLabels(Method):
    name = "flyp_pl"
    Options = FlypOptions

    def __init__(self, loaded, info, options, device):
        super().__init__(loaded, info, options, device)
        source = getattr(options, "pseudo_labels", None)
        if source is not None and source not in PSEUDO_LABEL_SOURCES:
            raise LatteclipError(f"--pseudo-labels {source} must be one of {', '.join(PSEUDO_LABEL_SOURCES)}")
        self.needs_zero_shot_labels = source == "zero-shot"

    def labels_for(self, batch: dict, image_features: torch.Tensor) -> torch.Tensor:
        if self.needs_zero_shot_labels:
            return self.ctx.zero_shot_labels.to(image_features.device)[batch["index"]]
        # fp32 whatever autocast the step runs under: bf16 cosines would flip near-ties (GPU and CPU runs would differ)
        with torch.no_grad(), full_precision(image_features):
            return (image_features.detach().float() @ self.classifier().float().t()).argmax(dim=-1)

    def training_step(self, batch: dict, step: int) -> StepResult:
        image_features = F.normalize(self.model.encode_image(batch["image"]), dim=-1)
        labels = self.labels_for(batch, image_features)
        class_texts = self.info.class_texts()
        text_features = encode_texts(self.model, self.tokens, [class_texts[c] for c in labels.tolist()], self.device)
        loss = contrastive_loss(image_features, text_features, self.model.logit_scale)
        return StepResult(loss, {"loss": loss.item()}, pseudo_labels=labels)


class SupervisedOracle(FlypPseudoLabels):
    name = "oracle"
    Options = NoOptions
    reads_train_labels = True

    def labels_for(self, batch: dict, image_features: torch.Tensor) -> torch.Tensor:
        return batch["label"]
