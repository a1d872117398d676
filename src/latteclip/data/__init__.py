"""Datasets, image sources, transforms and collages: the bottom layer, which knows nothing of models."""

from latteclip.data.datasets import CorruptImage, DatasetInfo, DatasetOptions, ImageDataset, Sample, collate
from latteclip.data.registry import available_datasets, build_dataset, register_builder

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
