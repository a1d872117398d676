"""What a training run carries from step to step, and one optimisation step.

`TrainState` owns everything `last.pt` must hold for a resumed run to replay exactly the steps an
uninterrupted one takes: the weights, the method's state, the optimizer, the grad scaler, every RNG,
the images found unreadable, and the identity of the run (its settings, the precision actually used
and the device type, which change the numbers and the grad scaler's state).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latteclip import distributed
from latteclip.config import RESUME_MAY_CHANGE, RunConfig
from latteclip.engine.evaluate import autocast_for_precision
from latteclip.engine.optim import optimizer_for_run, scaled_groups
from latteclip.engine.session import resolve_precision
from latteclip.errors import LatteclipError
from latteclip.methods.base import Method, StepResult
from latteclip.models.losses import MAX_LOGIT_SCALE

RUNTIME_KEYS = ("precision_in_use", "device_type", "deterministic_kernels")


def run_identity(config: RunConfig, device: torch.device) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: the settings, the precision, the device type and
    whether CUDA kernels are deterministic (what changes the numbers, beyond the config)."""
    runtime = (resolve_precision(config.precision, device), device.type, torch.are_deterministic_algorithms_enabled())
    return {**config.to_dict(), **dict(zip(RUNTIME_KEYS, runtime))}


def check_resumable(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """A resumed run must replay the same steps: refuse one whose settings, precision or device type changed."""
    keys = sorted(set(saved) | set(current))
    keys = [k for k in keys if k in saved or k not in RUNTIME_KEYS]  # last.pt files older than these keys
    changed = [k for k in keys if k not in RESUME_MAY_CHANGE and saved.get(k) != current.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:4])
        raise LatteclipError(
            f"cannot resume {run_dir}: it was started with other settings ({diffs}); "
            f"resume with the same options on the same kind of device, or start a new run with another --name"
        )


def rng_states(device: torch.device) -> dict[str, Any]:
    """Every random generator a method may draw from, saved with the checkpoint.

    On GPUs each rank's own CUDA generator is kept (a row per rank): a collective, so every rank calls it.
    """
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        own = torch.cuda.get_rng_state(device).to(device).unsqueeze(0)
        states["cuda_ranks"] = distributed.gather(own).cpu()
    return states


def restore_rng_states(states: dict[str, Any], device: torch.device | None = None) -> None:
    """Put the generators back as `rng_states` saved them; on a GPU, this rank's row (or rank 0's, from old files)."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if device is None or device.type != "cuda":
        return
    if "cuda_ranks" in states:
        rows = states["cuda_ranks"]
        torch.cuda.set_rng_state(rows[distributed.rank() % len(rows)], device)
    elif "cuda" in states:  # written before per-rank states: every GPU's generator as rank 0 saw them
        torch.cuda.set_rng_state(states["cuda"][device.index or 0], device)


@dataclass
class TrainState:
    """The optimizer, grad scaler and counters of a run; `payload` and `resume` round-trip them through last.pt."""

    method: Method
    config: RunConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    params: list[torch.Tensor]
    base_lrs: list[float]  # each group's rate before the schedule scales it
    sync: distributed.GradientSync  # the mean of the gradients over processes
    step: int = 0
    unreadable: set[int] = field(default_factory=set)

    @classmethod
    def create(cls, method: Method, config: RunConfig, device: torch.device) -> TrainState:
        groups = scaled_groups(method.parameters())
        optimizer = optimizer_for_run(groups, config)
        # fp16 gradients underflow without loss scaling; disabled, the scaler passes everything through
        fp16 = resolve_precision(config.precision, device) == "fp16"
        scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        params = [p for _, group in groups for p in group]
        base_lrs = [group["lr"] for group in optimizer.param_groups]
        return cls(method, config, device, optimizer, scaler, params, base_lrs, distributed.GradientSync(params))

    def resume(self, saved: dict[str, Any]) -> None:
        self.method.model.load_state_dict(saved["model"])
        self.method.load_state_dict(saved["method_state"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if saved["grad_scaler"] or not self.scaler.is_enabled():  # {} is a disabled scaler's state
            self.scaler.load_state_dict(saved["grad_scaler"])
        restore_rng_states(saved["rng"], self.device)
        self.unreadable = set(saved.get("unreadable", []))
        self.step = saved["step"]

    def payload(self, metrics_lines: int) -> dict[str, Any]:
        """What last.pt holds (a collective on GPUs, for the RNG states: every rank calls it)."""
        return {
            "step": self.step,
            "model": self.method.model.state_dict(),
            "method_state": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "rng": rng_states(self.device),
            "metrics_lines": metrics_lines,
            "unreadable": sorted(distributed.union(self.unreadable, self.device)),
            "config": run_identity(self.config, self.device),
        }

    def set_learning_rate(self, scale: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale

    def optimisation_step(self, batch: dict, step: int) -> StepResult:
        """One step: the method's loss, averaged gradients, the update, and the method's own state updates.

        A step the grad scaler skips (inf or NaN gradients in fp16) moves nothing: neither the
        weights nor the method's prototypes, EMA encoders and queues.
        """
        with autocast_for_precision(self.config.precision, self.device):
            result = self.method.training_step(batch, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.scaler.scale(result.loss)
        self.sync.start(loss)
        loss.backward()  # gradients are all-reduced in buckets while it runs
        self.sync.finish()
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if scale is not None and self.scaler.get_scale() < scale:  # the scaler lowers its scale when it skips
            return result
        with torch.no_grad():
            self.method.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.method.after_optimizer_step(batch, result, step)
        return result
