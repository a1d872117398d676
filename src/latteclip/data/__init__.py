"""Datasets, image sources, transforms and collages: the bottom layer, which knows nothing of models."""

from latteclip.data.datasets import CorruptImage, DatasetInfo, ImageDataset, Sample, collate
from latteclip.data.registry import DatasetOptions, available_datasets, build_dataset, register_builder
from latteclip.data import fmnist as _fmnist  # noqa: F401  (registers fmnist and fmnist-<shift>)

__all__ = [
    "CorruptImage",
    "DatasetInfo",
    "DatasetOptions",
    "ImageDataset",
    "Sample",
    "available_datasets",
    "build_dataset",
    "collate",
    "register_builder",
]
