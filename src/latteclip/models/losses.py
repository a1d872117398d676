"""Losses with a closed form, kept apart from the loop so that methods and tests can call them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from latteclip.distributed import gather_with_grad, is_distributed

MAX_SCALE = 100.0  # CLIP's cap on the softmax temperature's inverse
MAX_LOGIT_SCALE = math.log(MAX_SCALE)  # the same cap on the learnable log-scale, applied after each step


def capped_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale), at most MAX_SCALE: the factor every method's logits are multiplied by."""
    return logit_scale.exp().clamp(max=MAX_SCALE)


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Eq. (3): CLIP's symmetric InfoNCE over the batch, the diagonal being the positive pairs.

    `logit_scale` is the model's learnable log-temperature; its exponential is clamped at 100.
    Features are used as given (normalise them first); the result is the mean of the
    image-to-text and text-to-image cross-entropies. Under torchrun the features of every rank
    are gathered (with gradients) first, so the loss is the one of the global batch.
    """
    if is_distributed():  # one gather for both (rows are pairs), not one per tensor
        width = image_features.shape[1]
        dtype = torch.promote_types(image_features.dtype, text_features.dtype)
        both = gather_with_grad(torch.cat([image_features.to(dtype), text_features.to(dtype)], dim=1))
        image_features, text_features = both[:, :width], both[:, width:]
    scale = capped_scale(logit_scale)
    logits = scale * image_features @ text_features.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
