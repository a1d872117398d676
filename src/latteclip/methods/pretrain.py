"""Contrastive pre-training on a labelled source domain: image-caption pairs made from the labels.

Not a label-free method: it stands in for the web-scale pre-training that produced the CLIP
models the other methods adapt (the demo pre-trains a tiny CLIP on clean Fashion-MNIST and
then adapts it to shifted copies). Each image is paired with a caption of its true class,
written with one of the dataset's templates drawn at random per image and step, and the
step is CLIP's symmetric contrastive loss over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latteclip.engine.losses import contrastive_loss
from latteclip.methods.base import Method, StepResult
from latteclip.models import encode_texts


class ContrastivePretraining(Method):
    name = "pretrain"
    reads_train_labels = True

    def captions(self, labels: torch.Tensor, step: int) -> list[str]:
        """A caption per image: template drawn from a generator seeded by (seed, step), so a resumed run repeats it."""
        generator = torch.Generator().manual_seed(self.ctx.seed * 1_000_003 + step)
        choice = torch.randint(len(self.info.templates), (len(labels),), generator=generator).tolist()
        return [self.info.templates[t].format(self.info.classnames[c]) for t, c in zip(choice, labels.tolist())]

    def training_step(self, batch: dict, step: int) -> StepResult:
        image_features = F.normalize(self.model.encode_image(batch["image"]), dim=-1)
        text_features = encode_texts(self.model, self.tokens, self.captions(batch["label"], step), self.device)
        loss = contrastive_loss(image_features, text_features, self.model.logit_scale)
        return StepResult(loss, {"loss": loss.item(), "logit_scale": self.model.logit_scale.exp().item()})
