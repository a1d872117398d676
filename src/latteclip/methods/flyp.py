"""FLYP + pseudo-labels and the supervised oracle (method.md section 2).

Both train both towers with the contrastive loss between each image and "a photo of a {c}."
(the dataset's first template). FLYP + pseudo-labels takes c from the current model, recomputed
at every step; the oracle takes the true label and is the only method that reads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latteclip.engine.losses import contrastive_loss
from latteclip.methods.base import Method, StepResult
from latteclip.models import encode_texts


class FlypPseudoLabels(Method):
    name = "flyp_pl"

    def labels_for(self, batch: dict, image_features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (image_features.detach() @ self.classifier().t()).argmax(dim=-1)

    def training_step(self, batch: dict, step: int) -> StepResult:
        image_features = F.normalize(self.model.encode_image(batch["image"]), dim=-1)
        labels = self.labels_for(batch, image_features)
        class_texts = self.info.class_texts()
        text_features = encode_texts(self.model, self.tokens, [class_texts[c] for c in labels.tolist()], self.device)
        loss = contrastive_loss(image_features, text_features, self.model.logit_scale)
        return StepResult(loss, {"loss": loss.item()}, pseudo_labels=labels)


class SupervisedOracle(FlypPseudoLabels):
    name = "oracle"
    reads_train_labels = True

    def labels_for(self, batch: dict, image_features: torch.Tensor) -> torch.Tensor:
        return batch["label"]
