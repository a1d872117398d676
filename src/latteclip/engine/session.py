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
    """`auto` is the GPU when there is one; under torchrun each process takes its LOCAL_RANK's GPU.

    Under torchrun `cuda:N` is refused unless N is the process's local rank: the same flag reaches
    every rank, so honouring it would put all ranks on GPU N (NCCL fails), and silently replacing it
    would hide that the user's choice was ignored. GPUs for a multi-process job are chosen with
    CUDA_VISIBLE_DEVICES. Every refusal comes before any process group exists.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise LatteclipError(f"--device {name} is not a device: use auto, cpu, cuda or cuda:N") from err
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise LatteclipError(f"--device {name}: this machine shows no CUDA GPU (use --device cpu or auto)")
    local_rank = torchrun_local_rank()
    if local_rank is None:
        return device
    if device.index is not None and device.index != local_rank:
        raise LatteclipError(
            f"--device {name} contradicts torchrun's LOCAL_RANK={local_rank}: each process uses the GPU of its "
            "local rank; pass --device cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise LatteclipError(
            f"torchrun's LOCAL_RANK={local_rank} has no GPU: this node shows {count}; "
            f"start at most {count} processes per node (--nproc-per-node {count})"
        )
    return torch.device("cuda", local_rank)


def torchrun_local_rank() -> int | None:
    """This process's local rank when torchrun started several processes, else None."""
    if "LOCAL_RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ["LOCAL_RANK"])


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run really computes in: fp32, bf16 or fp16 (the --precision flag may say `auto`).

    `auto` is bf16 autocast only on a GPU that does bf16 natively (Ampere or newer); elsewhere it is
    fp32, not fp16: on V100 / T4 emulated bf16 is slower than fp32, and fp16 would need loss scaling
    and change results, which a user should ask for (--precision fp16). The CPU always runs fp32.
    """
    if device.type != "cuda" or precision == "fp32":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return precision


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
            self.built[split] = build_dataset(
                cfg.dataset, cfg.root, split, self.loaded.eval_transform(), dataset_options(cfg)
            )
        data = self.built[split]
        if train_time:
            return data.with_transform(self.loaded.train_transform(cfg.augment, cfg.augment_policy), item_seed=cfg.seed)
        return data

    def evaluation_set(self) -> ImageDataset | None:
        """The labelled images accuracy is measured on: `--eval-dataset`, else the test split; None without labels."""
        cfg = self.config
        if cfg.eval_dataset:
            transform = self.loaded.eval_transform()
            data = build_dataset(
                cfg.eval_dataset, cfg.eval_root or "", "test", transform, DatasetOptions(seed=cfg.seed)
            )
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
        raise LatteclipError(
            f"--eval-dataset {config.eval_dataset} needs --eval-root PATH (its folder, archive or CSV file)"
        )
    info = build_info(config.dataset, config.root, dataset_options(config))  # before the slow part
    if method_cls.reads_train_labels and not info.labelled:
        raise LatteclipError(
            f"method {config.method} trains on the true labels and --dataset {config.dataset} has none: "
            "use a label-free method (zeroshot, flyp_pl, latteclip, reclip, coft, coft_plus) or labelled data"
        )
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
