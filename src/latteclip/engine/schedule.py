"""What runs when: the steps of a run, its seeded batches, and the learning rate (linear warm-up then cosine decay,
or constant)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latteclip import distributed
from latteclip.config import RunConfig


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


def epoch_steps(config: RunConfig) -> int | None:
    """Steps per epoch when an epoch is not one pass in full batches: the LatteCLIP authors' count of the dataset.

    Their loader made a fixed number of steps per epoch on each dataset's full training split (e.g. EuroSAT 39, so
    15 epochs are 585 steps, where floor(18900 / 512) = 36 per pass gives 540). A `--limit` subset is not the split
    their counts describe, nor is a `--train-fraction` share: their epochs are passes in full batches, so that
    Figure 6's fractions train the same epochs over less data, as the authors' loader would have made fewer steps of
    a smaller set.
    """
    if config.epoch_length == "authors" and config.limit is None and config.train_fraction == 1.0:
        return config.authors_steps_per_epoch
    return None


@dataclass(frozen=True)
class Schedule:
    """The steps of one run: a function of the data size and the config only, so a resumed run plans the same.

    An epoch (what `--epochs` counts, ReCLIP's refreshes, the log's epoch) is `steps_per_epoch` steps; the batches
    come from seeded passes over the data, `batches_per_pass` full batches each, one pass after the other, so an
    epoch of the authors' count may end inside a pass.
    """

    num_samples: int
    batch_size: int  # the global batch
    seed: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    batches_per_pass: int = 0  # 0: steps_per_epoch (an epoch is one pass)
    lr_schedule: str = "cosine"

    @classmethod
    def plan(
        cls,
        num_samples: int,
        batch_size: int,
        seed: int,
        epochs: int,
        max_steps: int | None,
        warmup_steps: int,
        steps_per_epoch: int | None = None,
        lr_schedule: str = "cosine",
    ) -> Schedule:
        """`steps_per_epoch` None: one pass in full batches; `lr_schedule` constant has no warm-up."""
        batch_size = min(batch_size, num_samples)
        batches_per_pass = len(epoch_batches(num_samples, batch_size, seed, 0))
        per_epoch = steps_per_epoch or batches_per_pass
        total = max(1, epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch))
        # the warm-up stays short on short runs: at most a tenth of the steps
        warmup = min(warmup_steps, total // 10) if lr_schedule == "cosine" else 0
        return cls(num_samples, batch_size, seed, epochs, per_epoch, total, warmup, batches_per_pass, lr_schedule)

    @classmethod
    def for_run(cls, config: RunConfig, num_samples: int, epochs: int) -> Schedule:
        """The schedule a run with `config` trains `num_samples` images for `epochs` epochs with."""
        return cls.plan(
            num_samples,
            config.batch_size,
            config.seed,
            epochs,
            config.max_steps,
            config.warmup_steps,
            epoch_steps(config),
            config.lr_schedule,
        )

    def lr_scale(self, step: int) -> float:
        if self.lr_schedule == "constant":
            return 1.0
        return cosine_with_warmup(step, self.total_steps, self.warmup_steps)

    def batches_from(self, step: int):
        """(pass, this rank's indices) of every step from `step` to the end, in order."""
        per_pass = self.batches_per_pass or self.steps_per_epoch
        while step < self.total_steps:
            data_pass, position = divmod(step, per_pass)
            for batch in epoch_batches(self.num_samples, self.batch_size, self.seed, data_pass)[position:]:
                if step >= self.total_steps:
                    return
                yield [(data_pass, index) for index in rank_slice(batch)]
                step += 1

    def record(self) -> dict[str, int]:
        """What results.json says about the steps actually run."""
        return {
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
        }
