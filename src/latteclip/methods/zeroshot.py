"""CLIP zero-shot: class text features, cosine, argmax. Nothing is trained."""

from __future__ import annotations

import torch

from latteclip.methods.base import Method
from latteclip.methods.options import ZeroShotOptions
from latteclip.models import class_text_features


class ZeroShot(Method):
    name = "zeroshot"
    Options = ZeroShotOptions
    trains = False

    def classifier(self) -> torch.Tensor:
        templates = self.info.templates if self.options.ensemble else self.info.templates[:1]
        return class_text_features(self.model, self.tokens, self.info.classnames, templates, self.device)
