"""The training loop shared by every method.

Determinism and resume: the order of samples in epoch e is a permutation seeded by (seed, e),
each image's augmentation is seeded by (seed, e, index), and `last.pt` holds the weights, the
optimizer, the method's state and the position in the epoch. A run killed at any point and
resumed with `--resume` therefore replays exactly the steps an uninterrupted run would take.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from latteclip.config import RunConfig, save_config
from latteclip.data import ImageDataset, collate
from latteclip.engine.checkpoint import load_checkpoint, save_checkpoint
from latteclip.engine.evaluate import accuracy_report
from latteclip.engine.features import extract_features, predict_labels, zero_shot_labels
from latteclip.engine.losses import MAX_LOGIT_SCALE
from latteclip.engine.schedule import cosine_with_warmup
from latteclip.engine.session import Session, inference_payload, open_session
from latteclip.errors import LatteclipError
from latteclip.methods.base import TrainContext


class MetricsLog:
    """metrics.jsonl (one JSON object per record) plus TensorBoard scalars when available."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.is_file():
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.handle = open(self.path, "a")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        except Exception:  # TensorBoard is optional: the JSON lines are the record
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a seeded permutation cut into full batches (a short set gives one batch)."""
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    if num_samples < batch_size:
        return [order]
    return [order[i : i + batch_size] for i in range(0, num_samples - batch_size + 1, batch_size)]


def autocast_for(config: RunConfig, device: torch.device):
    if device.type == "cuda" and config.precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cuda" and config.precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def build_optimizer(params, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW; gains, biases and the logit scale (1-D tensors) get no weight decay, as in OpenCLIP."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": config.weight_decay}],
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
    )


class Trainer:
    def __init__(self, session: Session):
        self.session = session
        self.config = session.config
        self.method = session.method
        self.device = session.device
        self.run_dir = self.config.run_dir
        self.unreadable: set[int] = set()
        self.timings: dict[str, float] = {}

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self, test_set: ImageDataset, pristine: bool = False) -> dict:
        method = self.method
        was_training = method.model.training
        method.model.eval()
        with torch.no_grad(), autocast_for(self.config, self.device):
            features, valid = extract_features(
                method.encode_images,
                test_set,
                self.device,
                self.config.eval_batch_size,
                self.config.workers,
                desc="evaluate",
                cache_key=self.pristine_key() if pristine else None,
            )
            classifier = method.classifier().float()
        method.model.train(was_training)
        predictions = predict_labels(features, valid, classifier)
        return accuracy_report(predictions, test_set.labels, valid, method.info.classnames)

    def pristine_key(self) -> str:
        loaded = self.session.loaded
        return f"{loaded.model_name}|{loaded.weights_id}|{self.method.name}|encode_images"

    def zero_shot_labels(self, eval_train_set: ImageDataset) -> torch.Tensor:
        """c_zs for every training image with the frozen model, computed once and cached on disk."""
        info = self.method.info
        return zero_shot_labels(
            self.session.loaded, self.method.tokens, info.classnames, info.templates[0], eval_train_set,
            self.device, self.config.eval_batch_size, self.config.workers,
        )

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last_path = self.run_dir / "last.pt"
        resume_state = load_checkpoint(last_path) if cfg.resume and last_path.is_file() else None
        if cfg.resume and resume_state is None and (self.run_dir / "final.pt").is_file():
            raise LatteclipError(f"run {self.run_dir} already finished (final.pt exists); choose another --name to train again")
        save_config(cfg, self.run_dir / "config.yaml")
        log = MetricsLog(self.run_dir, resume_state["step"] if resume_state else None)
        started = time.time()
        test_set = self.session.dataset("test")
        try:
            if not self.method.trains:
                report = self.evaluate(test_set, pristine=True)
                return self.finish(report, log, steps=0, started=started)
            return self.train(test_set, log, resume_state, started)
        finally:
            log.close()

    def train(self, test_set: ImageDataset, log: MetricsLog, resume_state: dict | None, started: float) -> dict:
        cfg = self.config
        method = self.method
        train_set = self.session.dataset("train", train_time=True)
        if len(train_set) == 0:
            raise LatteclipError(f"dataset {cfg.dataset} has no training images under {cfg.root}")
        t0 = time.time()
        zs_labels = self.zero_shot_labels(self.session.dataset("train")) if method.needs_zero_shot_labels else None
        self.timings["zero_shot_labels_s"] = time.time() - t0
        ctx = TrainContext(train_set, zs_labels, self.run_dir, cfg.seed, cfg.store, log.write)
        t0 = time.time()
        method.setup_training(ctx)
        self.timings["setup_s"] = time.time() - t0
        params = list(method.parameters())
        optimizer = build_optimizer(params, cfg)
        batch_size = min(cfg.batch_size, len(train_set))
        steps_per_epoch = len(epoch_batches(len(train_set), batch_size, cfg.seed, 0))
        total_steps = max(1, min(cfg.max_steps, cfg.epochs * steps_per_epoch))
        base_lrs = [group["lr"] for group in optimizer.param_groups]

        step = 0
        if resume_state is not None:
            method.model.load_state_dict(resume_state["model"])
            method.load_state_dict(resume_state["method_state"])
            optimizer.load_state_dict(resume_state["optimizer"])
            torch.set_rng_state(resume_state["torch_rng"])
            self.unreadable = set(resume_state.get("unreadable", []))
            step = resume_state["step"]
        elif cfg.eval_every > 0:
            report = self.evaluate(test_set, pristine=True)
            log.write({"step": 0, "eval/top1": report["top1"]})

        method.model.train()
        progress = tqdm(total=total_steps, initial=step, desc=f"train {method.name}", unit="step", dynamic_ncols=True)
        last_loss = math.nan
        while step < total_steps:
            epoch, position = divmod(step, steps_per_epoch)
            train_set.epoch = epoch
            batches = epoch_batches(len(train_set), batch_size, cfg.seed, epoch)[position:]
            loader = DataLoader(
                train_set,
                batch_sampler=batches,
                num_workers=cfg.workers,
                collate_fn=collate,
                pin_memory=self.device.type == "cuda",
                persistent_workers=False,
            )
            for batch in loader:
                if step >= total_steps:
                    break
                self.note_unreadable(batch["skipped"], train_set)
                scale = cosine_with_warmup(step, total_steps, min(cfg.warmup_steps, total_steps // 10))
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * scale
                if batch["image"] is not None and len(batch["index"]) > 1:
                    batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                    with autocast_for(cfg, self.device):
                        result = method.training_step(batch, step)
                    optimizer.zero_grad(set_to_none=True)
                    result.loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    with torch.no_grad():
                        method.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                    method.after_optimizer_step(batch, result, step)
                    last_loss = result.loss.item()
                    record = {"step": step + 1, "epoch": epoch, "lr": optimizer.param_groups[-1]["lr"], **result.metrics}
                    if result.pseudo_labels is not None:
                        # analysis only: reads the true labels of the batch, never fed back to training
                        record["analysis/pseudo_label_acc"] = (result.pseudo_labels == batch["label"]).float().mean().item()
                    if (step + 1) % cfg.log_every == 0 or step == 0:
                        log.write(record)
                step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}")
                if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < total_steps:
                    report = self.evaluate(test_set)
                    log.write({"step": step, "eval/top1": report["top1"]})
                if step % cfg.checkpoint_every == 0 or step == total_steps:
                    self.save_last(step, optimizer)
        progress.close()
        report = self.evaluate(test_set)
        log.write({"step": step, "eval/top1": report["top1"]})
        return self.finish(report, log, steps=step, started=started)

    def note_unreadable(self, skipped: list[int], dataset: ImageDataset) -> None:
        for index in skipped:
            if index not in self.unreadable:
                self.unreadable.add(index)
                warnings.warn(f"unreadable training image skipped: {dataset.samples[index].path}", stacklevel=2)

    def save_last(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        save_checkpoint(
            self.run_dir / "last.pt",
            {
                "step": step,
                "model": self.method.model.state_dict(),
                "method_state": self.method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "unreadable": sorted(self.unreadable),
                "config": self.config.to_dict(),
            },
        )

    def finish(self, report: dict, log: MetricsLog, steps: int, started: float) -> dict:
        cfg = self.config
        payload = inference_payload(self.session)
        payload["model"] = self.method.model.state_dict()
        self.timings["total_s"] = time.time() - started
        results = {
            "method": self.method.name,
            "dataset": cfg.dataset,
            "model": cfg.model,
            "pretrained": cfg.pretrained,
            "seed": cfg.seed,
            "steps": steps,
            "top1": report["top1"],
            "test": report,
            "unreadable_train_images": len(self.unreadable),
            "unreadable_test_images": report["unreadable"],
            "timings": self.timings,
        }
        payload["results"] = {"top1": report["top1"], "steps": steps}
        save_checkpoint(self.run_dir / "final.pt", payload)
        (self.run_dir / "results.json").write_text(json.dumps(results, indent=1))
        return results


def run_training(config: RunConfig) -> dict:
    return Trainer(open_session(config)).run()
