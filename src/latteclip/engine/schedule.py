"""What runs when: the steps of a run, its seeded batches, and the learning rate (linear warm-up, then cosine decay)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latteclip import distributed


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int) -> float:
    """The multiplier of the base learning rate at `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a seeded permutation cut into full batches (a short set gives one batch)."""
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    if num_samples < batch_size:
        return [order]
    return [order[i : i + batch_size] for i in range(0, num_samples - batch_size + 1, batch_size)]


def rank_slice(batch: list[int]) -> list[int]:
    """This rank's contiguous share of a global batch (rank order = global batch order)."""
    rank, world = distributed.rank(), distributed.world_size()
    return batch[rank * len(batch) // world : (rank + 1) * len(batch) // world]


@dataclass(frozen=True)
class Schedule:
    """The steps of one run: a function of the data size and the config only, so a resumed run plans the same."""

    num_samples: int
    batch_size: int  # the global batch
    seed: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def plan(
        cls, num_samples: int, batch_size: int, seed: int, epochs: int, max_steps: int | None, warmup_steps: int
    ) -> Schedule:
        batch_size = min(batch_size, num_samples)
        steps_per_epoch = len(epoch_batches(num_samples, batch_size, seed, 0))
        total = max(1, epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch))
        # the warm-up stays short on short runs: at most a tenth of the steps
        return cls(num_samples, batch_size, seed, epochs, steps_per_epoch, total, min(warmup_steps, total // 10))

    def lr_scale(self, step: int) -> float:
        return cosine_with_warmup(step, self.total_steps, self.warmup_steps)

    def batches_from(self, step: int):
        """(epoch, this rank's indices) of every step from `step` to the end, in order."""
        while step < self.total_steps:
            epoch, position = divmod(step, self.steps_per_epoch)
            for batch in epoch_batches(self.num_samples, self.batch_size, self.seed, epoch)[position:]:
                if step >= self.total_steps:
                    return
                yield [(epoch, index) for index in rank_slice(batch)]
                step += 1

    def record(self) -> dict[str, int]:
        """What results.json says about the steps actually run."""
        return {
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
        }
