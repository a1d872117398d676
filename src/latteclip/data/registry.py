"""`build_dataset(name, root, split, transform)`: the one entry point to every dataset, and the registry of builders.

A builder turns (name, root, split, options) into the dataset's names and its train/val/test samples over an image
source. Built in: the paper datasets (`coop.py`, one JSON spec each) and the user's own data (`custom.py`: `folder`,
`csv`, `images`). Other builders register with `register_builder`; a module that defines datasets registers its
own when imported, and `DATASET_MODULES` names the modules of this package imported the first time one of their
names is asked for (the demo's Fashion-MNIST domains), so that nothing imports them before they are used.
Users override a dataset's names with `--classnames`, `--templates` and `--domain` (`names.py`); `--limit` takes a
seeded subset, `--train-fraction` a seeded share of the training split (`subsets.py`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from latteclip.data.coop import build_spec_dataset, spec_names
from latteclip.data.custom import build_csv, build_folder, build_images
from latteclip.data.datasets import DatasetInfo, DatasetOptions, ImageDataset, Sample
from latteclip.data.names import apply_overrides
from latteclip.data.sources import ImageSource
from latteclip.data.subsets import stratified_subset, training_share, uniform_subset
from latteclip.errors import LatteclipError

SPLITS = ("train", "test", "train_only", "val")
Builder = Callable[[str, str, str, DatasetOptions], tuple[DatasetInfo, dict[str, list[Sample]], ImageSource]]
_BUILDERS: dict[str, Builder] = {}
CUSTOM_BUILDERS: dict[str, Builder] = {"folder": build_folder, "csv": build_csv, "images": build_images}
DATASET_MODULES = {"fmnist": "latteclip.data.fmnist"}  # name (and name-<variant>) -> the module that registers it


def register_builder(name: str, builder: Builder) -> None:
    """Make `name` (or every name starting with `name` when it ends in '-') buildable."""
    _BUILDERS[name] = builder


def _import_dataset_modules(name: str | None = None) -> None:
    """Import the modules of `DATASET_MODULES` that define `name` (every one for None); each registers its builders."""
    for prefix, module in DATASET_MODULES.items():
        if name is None or name == prefix or name.startswith(f"{prefix}-"):
            importlib.import_module(module)


def available_datasets() -> list[str]:
    _import_dataset_modules()
    return spec_names() + list(CUSTOM_BUILDERS) + sorted(_BUILDERS)


def build_dataset(
    name: str,
    root: str | Path,
    split: str = "train",
    transform: Callable | None = None,
    options: DatasetOptions | None = None,
) -> ImageDataset:
    """Build one split. `train` is CoOp train + val (what unsupervised methods see); `test` is evaluation."""
    options = options or DatasetOptions()
    if split not in SPLITS:
        raise LatteclipError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    root = str(root)
    builder = _find_builder(name)
    info, parts, source = builder(name, root, split, options)
    if split == "train":
        samples = parts["train"] + parts["val"]
    elif split == "train_only":
        samples = parts["train"]
    else:
        samples = parts[split]
    if options.limit is not None:
        if options.limit < 1:
            raise LatteclipError(f"--limit must be a positive number of images per split, got {options.limit}")
        if split in ("train", "train_only"):  # what training sees must not depend on labels
            samples = uniform_subset(samples, options.limit, options.seed)
        else:
            samples = stratified_subset(samples, options.limit, options.seed)
    if split in ("train", "train_only"):  # a share of what training sees; the test split stays whole
        samples = training_share(samples, options.train_fraction, options.seed)
    if not samples and split == "test" and not info.labelled:
        raise LatteclipError(
            f"--dataset {name} has no labels, so no test split: pass --eval-dataset NAME --eval-root PATH "
            "(a labelled copy with the same classes) to measure accuracy"
        )
    if not samples and split in ("train", "test"):
        raise LatteclipError(f"dataset {name} under {root} has no {split} images (split: {info.split_source})")
    info = apply_overrides(info, options)
    return ImageDataset(info, samples, source, split, transform)


def build_info(name: str, root: str | Path, options: DatasetOptions | None = None) -> DatasetInfo:
    """A dataset's names, prompts and domain word (what a method is built from), whichever splits it has."""
    options = options or DatasetOptions()
    info, _, _ = _find_builder(name)(name, str(root), "test", options)
    return apply_overrides(info, options)


def _class_match_key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def align_classes(dataset: ImageDataset, info: DatasetInfo) -> ImageDataset:
    """`dataset` (labelled) with its labels renumbered to the classes of `info`, matched by class key or name.

    Lets a run on unlabeled images be measured on any labelled copy whose classes have the same names,
    whatever order that dataset numbers them in.
    """
    target: dict[str, int] = {}
    for index, (key, name) in enumerate(zip(info.class_keys, info.classnames)):
        for text in (key, name):
            target.setdefault(_class_match_key(text), index)
    mapping: dict[int, int] = {}
    for label, (key, name) in enumerate(zip(dataset.info.class_keys, dataset.info.classnames)):
        found = target.get(_class_match_key(key), target.get(_class_match_key(name)))
        if found is None:
            raise LatteclipError(
                f"evaluation dataset {dataset.info.name} has class '{key}', which is none of the run's class "
                f"names ({', '.join(info.classnames[:10])}): name the same classes in --classnames"
            )
        mapping[label] = found
    if len(set(mapping.values())) != len(mapping):
        raise LatteclipError(
            f"evaluation dataset {dataset.info.name} has two classes matching one class name of the run"
        )
    samples = [Sample(s.path, mapping[s.label]) for s in dataset.samples]
    aligned = replace(info, name=dataset.info.name, split_source=dataset.info.split_source, labelled=True)
    return ImageDataset(aligned, samples, dataset.source, dataset.split, dataset.transform)


def _find_builder(name: str) -> Builder:
    _import_dataset_modules(name)
    if name in _BUILDERS:
        return _BUILDERS[name]
    for prefix, builder in _BUILDERS.items():
        if prefix.endswith("-") and name.startswith(prefix):
            return builder
    if name in CUSTOM_BUILDERS:
        return CUSTOM_BUILDERS[name]
    if name in spec_names():
        return build_spec_dataset
    raise LatteclipError(f"unknown dataset '{name}': choose one of {', '.join(available_datasets())}")
