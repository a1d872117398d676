"""Build what a run needs from its config: device, model, datasets, method; and rebuild from a checkpoint."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from latteclip.config import RunConfig
from latteclip.data import DatasetOptions, ImageDataset, build_dataset
from latteclip.data.datasets import DatasetInfo
from latteclip.data.registry import align_classes, build_info
from latteclip.errors import LatteclipError
from latteclip.methods import build_options, get_method
from latteclip.methods.base import Method
from latteclip.models import LoadedModel, load_clip


def pick_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one; under torchrun each process takes its LOCAL_RANK's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dataset_options(config: RunConfig) -> DatasetOptions:
    return DatasetOptions.from_run(config.to_dict())


@dataclass
class Session:
    config: RunConfig
    device: torch.device
    loaded: LoadedModel
    method: Method

    built: dict[str, ImageDataset] = field(default_factory=dict, repr=False)  # each split's files, scanned once per run

    def dataset(self, split: str, train_time: bool = False) -> ImageDataset:
        """A split with the evaluation transform, or with seeded train-time augmentation (the same samples)."""
        cfg = self.config
        if split not in self.built:
            self.built[split] = build_dataset(cfg.dataset, cfg.root, split, self.loaded.eval_transform(), dataset_options(cfg))
        data = self.built[split]
        if train_time:
            return data.with_transform(self.loaded.train_transform(cfg.augment, cfg.augment_policy), item_seed=cfg.seed)
        return data

    def evaluation_set(self) -> ImageDataset | None:
        """The labelled images accuracy is measured on: `--eval-dataset`, else the test split; None without labels."""
        cfg = self.config
        if cfg.eval_dataset:
            transform = self.loaded.eval_transform()
            data = build_dataset(cfg.eval_dataset, cfg.eval_root or "", "test", transform, DatasetOptions(seed=cfg.seed))
            return align_classes(data, self.method.info)
        if not self.method.info.labelled:
            return None
        return self.dataset("test")


def open_session(config: RunConfig, device: torch.device | None = None) -> Session:
    """The run's model and method on `device` (default: the config's, picked now)."""
    device = device or pick_device(config.device)
    seed_everything(config.seed)
    method_cls = get_method(config.method)
    options = build_options(method_cls, dict(config.method_options))
    if config.eval_dataset and not config.eval_root:
        raise LatteclipError(f"--eval-dataset {config.eval_dataset} needs --eval-root PATH (its folder, archive or CSV file)")
    info = build_info(config.dataset, config.root, dataset_options(config))  # before the slow part
    if method_cls.reads_train_labels and not info.labelled:
        raise LatteclipError(f"method {config.method} trains on the true labels and --dataset {config.dataset} has none: "
                             "use a label-free method (zeroshot, flyp_pl, latteclip, reclip, coft, coft_plus) or labelled data")
    loaded = load_clip(config.model, config.pretrained, device)
    method = method_cls(loaded, info, options, device)
    return Session(config, device, loaded, method)


def inference_payload(session: Session) -> dict[str, Any]:
    """What `final.pt` holds besides the weights: enough to rebuild the classifier anywhere."""
    method = session.method
    return {
        "method": method.name,
        "method_options": asdict(method.options),
        "method_state": method.state_dict(),
        "model_name": session.loaded.model_name,
        "pretrained": session.loaded.pretrained,
        "info": asdict(method.info),
        "classifier": method.classifier().detach().cpu(),
        "config": session.config.to_dict(),
    }


def method_from_checkpoint(payload: dict[str, Any], device: torch.device) -> Method:
    """Rebuild the trained method (weights, prototypes, adapters) from `final.pt` without the training data."""
    loaded = load_clip(payload["model_name"], None, device)
    loaded.model.load_state_dict(payload["model"])
    loaded.pretrained = payload.get("pretrained", "")
    method_cls = get_method(payload["method"])
    info = DatasetInfo(**payload["info"])
    method = method_cls(loaded, info, method_cls.Options(**payload["method_options"]), device)
    method.load_state_dict(payload["method_state"])
    method.model.eval()
    return method
