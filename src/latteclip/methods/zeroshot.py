"""CLIP zero-shot: class text features, cosine, argmax. Nothing is trained."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latteclip.methods.base import Method
from latteclip.models import class_text_features


@dataclass
class ZeroShotOptions:
    ensemble: bool = False  # average all the dataset's templates instead of the first


class ZeroShot(Method):
    name = "zeroshot"
    Options = ZeroShotOptions
    trains = False

    def classifier(self) -> torch.Tensor:
        templates = self.info.templates if self.options.ensemble else self.info.templates[:1]
        return class_text_features(self.model, self.tokens, self.info.classnames, templates, self.device)
