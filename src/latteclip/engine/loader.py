"""The training run's one data loader: every step's images, from a worker pool forked once per run."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from latteclip.data import ImageDataset, collate
from latteclip.engine.schedule import Schedule


class EpochItems(Dataset):
    """Items addressed by (epoch, index): the epoch seeds the augmentation, in whichever process loads the image.

    One loader then serves the whole run; its workers need no new copy of the dataset each epoch.
    """

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict | None:
        epoch, index = key
        self.dataset.epoch = epoch
        return self.dataset[index]


class _StepBatches:
    """The batch sampler: this rank's indices of every step from `start` on (computed as they are drawn)."""

    def __init__(self, schedule: Schedule, start: int):
        self.schedule, self.start = schedule, start

    def __iter__(self):
        return self.schedule.batches_from(self.start)


def train_loader(
    dataset: ImageDataset, schedule: Schedule, start: int, workers: int, device: torch.device
) -> DataLoader:
    """Batches of the steps `start`..end; the same images for any `workers` and after any resume."""
    return DataLoader(
        EpochItems(dataset),
        batch_sampler=_StepBatches(schedule, start),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        # its own generator: creating a loader must not draw from the global RNG that methods use
        generator=torch.Generator().manual_seed(schedule.seed * 100003 + start),
    )
