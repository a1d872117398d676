"""A lightweight visual adaptation module: a residual bottleneck on the image features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureAdapter(nn.Module):
    """u -> u + up(relu(down(u))), with `up` starting at zero so that the adapter starts as the identity.

    Starting at the identity keeps the pre-trained model's predictions (and its cached zero-shot
    features) valid at step 0; the bottleneck keeps the module small (2 * d * d / reduction weights).
    """

    def __init__(self, dim: int, reduction: int = 4, seed: int = 0):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.down = nn.utils.skip_init(nn.Linear, dim, hidden)
        self.up = nn.utils.skip_init(nn.Linear, hidden, dim)
        generator = torch.Generator().manual_seed(seed)  # its own generator: building it never moves the global RNG
        with torch.no_grad():
            bound = 1.0 / dim**0.5
            self.down.weight.uniform_(-bound, bound, generator=generator)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.up(F.relu(self.down(features)))
