"""The training loop shared by every method.

Determinism and resume: the order of samples in epoch e is a permutation seeded by (seed, e),
each image's augmentation is seeded by (seed, e, index), and `last.pt` holds the weights, the
optimizer, the method's state and the position in the epoch. A run killed at any point and
resumed with `--resume` therefore replays exactly the steps an uninterrupted run would take.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from latteclip import distributed
from latteclip.config import RESUME_MAY_CHANGE, RunConfig, save_config
from latteclip.data import ImageDataset, collate
from latteclip.engine.checkpoint import load_checkpoint, save_checkpoint
from latteclip.engine.diagnostics import label_free_diagnostics
from latteclip.engine.evaluate import autocast_for_precision, evaluate
from latteclip.engine.features import extract_features, zero_shot_labels
from latteclip.models.losses import MAX_LOGIT_SCALE
from latteclip.engine.results import RunResults, write_results
from latteclip.engine.run_folder import check_run_folder, prepare_run_folder
from latteclip.engine.schedule import cosine_with_warmup
from latteclip.engine.session import Session, inference_payload, open_session
from latteclip.errors import LatteclipError
from latteclip.methods.base import TrainContext


class MetricsLog:
    """metrics.jsonl (one JSON object per record) plus TensorBoard scalars when available; rank 0 only.

    `lines` counts the records written; a checkpoint stores it, and a resumed run keeps exactly
    that many lines, dropping what the killed run wrote after its last checkpoint (a half-written
    line, or the final evaluation of a run killed while finishing).
    """

    def __init__(self, run_dir: Path, resume_step: int | None, resume_lines: int = 0):
        self.enabled = distributed.is_main()
        self.lines = resume_lines
        if not self.enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            kept = self.path.read_text().splitlines()[:resume_lines]
        self.path.write_text("".join(ln + "\n" for ln in kept))
        self.lines = len(kept)
        self.handle = open(self.path, "a")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        except Exception:  # TensorBoard is optional: the JSON lines are the record
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        self.lines += 1
        if self.tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
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


def rank_slice(batch: list[int]) -> list[int]:
    """This rank's contiguous share of a global batch (rank order = global batch order)."""
    rank, world = distributed.rank(), distributed.world_size()
    return batch[rank * len(batch) // world : (rank + 1) * len(batch) // world]


def rng_states(device: torch.device) -> dict[str, Any]:
    """Every random generator a method may draw from, saved with the checkpoint."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])




def check_resumable(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """A resumed run must replay the same steps: refuse one whose settings changed."""
    changed = [k for k in sorted(set(saved) | set(current)) if k not in RESUME_MAY_CHANGE and saved.get(k) != current.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:4])
        raise LatteclipError(
            f"cannot resume {run_dir}: it was started with other settings ({diffs}); "
            f"resume with the same options, or start a new run with another --name"
        )


def autocast_for(config: RunConfig, device: torch.device):
    return autocast_for_precision(config.precision, device)


def scaled_groups(params) -> list[tuple[float, list[torch.Tensor]]]:
    """A method's `parameters()` as (learning-rate scale, trainable tensors) pairs.

    Methods hand tensors (trained at the base rate) and/or groups {"params": [...], "lr_scale": k}
    for parts trained at k times the base rate (prompts and adapters beside a fully fine-tuned encoder).
    """
    plain: list[torch.Tensor] = []
    groups: list[tuple[float, list[torch.Tensor]]] = []
    for entry in params:
        if isinstance(entry, dict):
            groups.append((float(entry.get("lr_scale", 1.0)), [p for p in entry["params"] if p.requires_grad]))
        elif entry.requires_grad:
            plain.append(entry)
    if plain or not groups:  # the base-rate tensors come first, as before methods could hand groups
        groups.insert(0, (1.0, plain))
    return groups


def build_optimizer(groups: list[tuple[float, list[torch.Tensor]]], config: RunConfig) -> torch.optim.Optimizer:
    """The run's optimizer, chosen per method in its config (AdamW for CLIP fine-tuning, SGD for ReCLIP).

    AdamW: gains, biases and the logit scale (1-D tensors) get no weight decay, as in OpenCLIP.
    SGD with momentum: weight decay on every tensor, as the ReCLIP authors ran it (it trains only LayerNorms).
    """
    if config.optimizer == "sgd":
        param_groups = [{"params": params, "lr": config.lr * scale} for scale, params in groups]
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.sgd_momentum, weight_decay=config.weight_decay)
    param_groups = []
    for scale, params in groups:
        param_groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": config.lr * scale})
        param_groups.append({"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay, "lr": config.lr * scale})
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


def accelerate(model: torch.nn.Module, config: RunConfig) -> None:
    """Gradient checkpointing and in-place torch.compile (state-dict keys stay those of OpenCLIP)."""
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if config.compile:
        model.visual.compile()
        if hasattr(model, "transformer"):
            model.transformer.compile(dynamic=True)  # token length varies: sequences are cut per step


class Trainer:
    def __init__(self, session: Session):
        self.session = session
        self.config = session.config
        self.method = session.method
        self.device = session.device
        self.run_dir = self.config.run_dir
        self.unreadable: set[int] = set()
        self.timings: dict[str, float] = {}
        self.schedule: dict[str, int] | None = None  # the steps actually run, written into results.json
        # without labelled images: the untrained classifier and its scores on the training images, for the diagnostics
        self.start: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self, test_set: ImageDataset, pristine: bool = False) -> dict:
        return evaluate(self.method, test_set, self.config.inference, self.pristine_key() if pristine else None)

    def features_of(
        self, encode, dataset: ImageDataset, desc: str = "features", cache_key: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split's features with the run's device, batch size and workers (also what `TrainContext.extract_features` calls)."""
        with torch.no_grad(), autocast_for(self.config, self.device):
            return extract_features(encode, dataset, self.device, self.config.eval_batch_size, self.config.workers, desc, cache_key)

    def scores(self, dataset: ImageDataset, pristine: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The current classifier [C, d], cosine scores [N, C] of every image of `dataset` with it, and the readable mask."""
        was_training = self.method.model.training
        self.method.model.eval()
        features, valid = self.features_of(self.method.encode_images, dataset, "predict", self.pristine_key() if pristine else None)
        with torch.no_grad(), autocast_for(self.config, self.device):
            classifier = self.method.classifier().float().cpu()
        self.method.model.train(was_training)
        return classifier, features @ classifier.t(), valid

    def remember_start(self) -> None:
        """Before any step (and before a resumed run loads its weights): what the diagnostics compare against."""
        classifier, scores, _ = self.scores(self.session.dataset("train"), pristine=True)
        self.start = (classifier, scores)

    def diagnostics(self) -> dict:
        """Label-free diagnostics of the finished run on its training images (engine.diagnostics)."""
        train_set = self.session.dataset("train")
        if self.start is None:  # a method that does not train: it ends where it started
            classifier, scores, valid = self.scores(train_set, pristine=True)
            self.start = (classifier, scores)
        else:
            classifier, scores, valid = self.scores(train_set)
        start_classifier, start_scores = self.start
        report = label_free_diagnostics(start_scores, scores, valid, start_classifier, classifier, self.method.info.classnames,
                                        [s.path for s in train_set.samples], self.config.seed)
        mixer = self.run_dir / "mixer_weights.json"  # LatteCLIP's sampled mixer weights per text kind
        if mixer.is_file():
            report["mean_mixer_weights"] = {k: sum(v) / len(v) for k, v in json.loads(mixer.read_text()).items() if v}
        return report

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
        if distributed.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        resume_state = load_checkpoint(self.run_dir / "last.pt") if cfg.resume else None  # check_run_folder saw it
        if resume_state is not None:
            check_resumable(resume_state["config"], cfg.to_dict(), self.run_dir)
        if distributed.is_main():  # a fresh start: outputs of an earlier run in this folder must not be resumed or mistaken for ours
            prepare_run_folder(self.run_dir, fresh=resume_state is None)
        distributed.barrier()
        if distributed.is_main():
            save_config(cfg, self.run_dir / "config.yaml")
        log = MetricsLog(
            self.run_dir,
            resume_state["step"] if resume_state else None,
            resume_state["metrics_lines"] if resume_state else 0,
        )
        started = time.time()
        test_set = self.session.evaluation_set()
        try:
            if not self.method.trains:
                report = self.evaluate(test_set, pristine=True) if test_set is not None else None
                return self.finish(report, log, steps=0, started=started)
            return self.train(test_set, log, resume_state, started)
        finally:
            log.close()

    def train(self, test_set: ImageDataset | None, log: MetricsLog, resume_state: dict | None, started: float) -> dict:
        cfg = self.config
        method = self.method
        train_set = self.session.dataset("train", train_time=True)
        t0 = time.time()
        zs_labels = self.zero_shot_labels(self.session.dataset("train")) if method.needs_zero_shot_labels else None
        self.timings["zero_shot_labels_s"] = time.time() - t0
        batch_size = min(cfg.batch_size, len(train_set))
        if batch_size % distributed.world_size():
            raise LatteclipError(f"--batch-size {batch_size} must be a multiple of the number of processes ({distributed.world_size()})")
        steps_per_epoch = len(epoch_batches(len(train_set), batch_size, cfg.seed, 0))
        epochs = cfg.epochs if cfg.epochs is not None else method.default_epochs(len(train_set))
        total_steps = max(1, epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, epochs * steps_per_epoch))
        # the warm-up stays short on short runs: at most a tenth of the steps
        warmup_steps = min(cfg.warmup_steps, total_steps // 10)
        self.schedule = {"total_steps": total_steps, "warmup_steps": warmup_steps, "steps_per_epoch": steps_per_epoch, "epochs": epochs}
        def method_log(record: dict[str, Any]) -> None:
            # a resumed run's set-up repeats what the killed run logged up to its checkpoint: kept once, not twice
            if resume_state is None or record.get("step", 0) > resume_state["step"]:
                log.write(record)

        ctx = TrainContext(
            train_set, zs_labels, self.run_dir, cfg.seed, cfg.store, method_log,
            extract_features=self.features_of, eval_transform=self.session.loaded.eval_transform(), steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
        )
        t0 = time.time()
        method.setup_training(ctx)
        self.timings["setup_s"] = time.time() - t0
        if test_set is None:
            self.remember_start()
        groups = scaled_groups(method.parameters())
        params = [p for _, group in groups for p in group]
        optimizer = build_optimizer(groups, cfg)
        accelerate(method.model, cfg)
        # fp16 gradients underflow without loss scaling; disabled, the scaler passes everything through
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.precision == "fp16")
        base_lrs = [group["lr"] for group in optimizer.param_groups]

        step = 0
        if resume_state is not None:
            method.model.load_state_dict(resume_state["model"])
            method.load_state_dict(resume_state["method_state"])
            optimizer.load_state_dict(resume_state["optimizer"])
            scaler.load_state_dict(resume_state["grad_scaler"])
            restore_rng_states(resume_state["rng"])
            self.unreadable = set(resume_state.get("unreadable", []))
            step = resume_state["step"]
        elif cfg.eval_every > 0 and test_set is not None:
            report = self.evaluate(test_set, pristine=True)
            log.write({"step": 0, "eval/top1": report["top1"]})

        method.model.train()
        progress = tqdm(
            total=total_steps, initial=step, desc=f"train {method.name}", unit="step", dynamic_ncols=True, disable=not distributed.is_main()
        )
        last_loss = math.nan
        while step < total_steps:
            epoch, position = divmod(step, steps_per_epoch)
            train_set.epoch = epoch
            batches = [rank_slice(b) for b in epoch_batches(len(train_set), batch_size, cfg.seed, epoch)[position:]]
            loader = DataLoader(
                train_set,
                batch_sampler=batches,
                num_workers=cfg.workers,
                collate_fn=collate,
                pin_memory=self.device.type == "cuda",
                persistent_workers=False,
                # its own generator: creating a loader must not draw from the global RNG that methods use
                generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch),
            )
            for batch in loader:
                if step >= total_steps:
                    break
                self.note_unreadable(batch["skipped"], train_set)
                scale = cosine_with_warmup(step, total_steps, warmup_steps)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * scale
                if batch["image"] is not None:
                    batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                    with autocast_for(cfg, self.device):
                        result = method.training_step(batch, step)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(result.loss).backward()
                    distributed.average_gradients(params)
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    with torch.no_grad():
                        method.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                    method.after_optimizer_step(batch, result, step)
                    last_loss = result.loss.item()
                    record = {"step": step + 1, "epoch": epoch, "lr": cfg.lr * scale, **result.metrics}
                    if result.pseudo_labels is not None and method.info.labelled:
                        # analysis only: reads the true labels of the batch, never fed back to training
                        correct = result.pseudo_labels == batch["label"]
                        record["analysis/pseudo_label_acc"] = correct.float().mean().item()
                        if result.kept is not None:  # is "clean" said of the right labels, and how right are the kept ones
                            record["analysis/clean_judgement_acc"] = (result.kept == correct).float().mean().item()
                            if bool(result.kept.any()):
                                record["analysis/kept_label_acc"] = correct[result.kept].float().mean().item()
                    if step == 0 or (cfg.log_every > 0 and (step + 1) % cfg.log_every == 0):
                        log.write(record)
                step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{cfg.lr * scale:.2e}")
                if test_set is not None and cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < total_steps:
                    report = self.evaluate(test_set)
                    log.write({"step": step, "eval/top1": report["top1"]})
                if step == total_steps or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0):
                    self.save_last(step, optimizer, scaler, log)
        progress.close()
        method.model.eval()
        if distributed.is_main():
            method.finish_training()
        report = self.evaluate(test_set) if test_set is not None else None
        if report is not None:
            log.write({"step": step, "eval/top1": report["top1"]})
        return self.finish(report, log, steps=step, started=started)

    def note_unreadable(self, skipped: list[int], dataset: ImageDataset) -> None:
        for index in skipped:
            if index not in self.unreadable:
                self.unreadable.add(index)
                warnings.warn(f"unreadable training image skipped: {dataset.samples[index].path}", stacklevel=2)

    def save_last(self, step: int, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, log: MetricsLog) -> None:
        if not distributed.is_main():
            return
        save_checkpoint(
            self.run_dir / "last.pt",
            {
                "step": step,
                "model": self.method.model.state_dict(),
                "method_state": self.method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "grad_scaler": scaler.state_dict(),
                "rng": rng_states(self.device),
                "metrics_lines": log.lines,
                "unreadable": sorted(self.unreadable),
                "config": self.config.to_dict(),
            },
        )

    def finish(self, report: dict | None, log: MetricsLog, steps: int, started: float) -> RunResults:
        """Write final.pt and results.json: accuracy on labelled images, or label-free diagnostics (`report` None)."""
        cfg = self.config
        payload = inference_payload(self.session)
        payload["model"] = self.method.model.state_dict()
        diagnostics = self.diagnostics() if report is None else None
        self.timings["total_s"] = time.time() - started
        results: RunResults = {
            "method": self.method.name,
            "dataset": cfg.dataset,
            "model": cfg.model,
            "pretrained": cfg.pretrained,
            "seed": cfg.seed,
            "steps": steps,
            "world_size": distributed.world_size(),
            "reads_train_labels": self.method.reads_train_labels,
            # "labelled": accuracy on labelled images (`test`); "label-free": no labels anywhere, `diagnostics` instead
            "evaluation": "labelled" if report is not None else "label-free",
            "evaluated_on": (f"{cfg.eval_dataset} {cfg.eval_root}" if cfg.eval_dataset else f"{cfg.dataset} test split") if report else None,
            "top1": report["top1"] if report else None,
            "test": report,
            "diagnostics": diagnostics,
            "unreadable_train_images": len(self.unreadable),
            "unreadable_test_images": report["unreadable"] if report else 0,
            "schedule": self.schedule,
            "timings": self.timings,
        }
        payload["results"] = {"top1": results["top1"], "steps": steps}
        if distributed.is_main():
            save_checkpoint(self.run_dir / "final.pt", payload)
            write_results(self.run_dir, results)
        distributed.barrier()
        return results


def run_training(config: RunConfig) -> RunResults:
    """Train (or evaluate) one run; under torchrun every process calls this and rank 0 writes."""
    from latteclip.engine.session import pick_device

    check_run_folder(config)  # before anything is loaded: a refusal costs nothing and touches nothing
    device = pick_device(config.device)
    distributed.init_from_environment(device.type)
    return Trainer(open_session(config, device)).run()
