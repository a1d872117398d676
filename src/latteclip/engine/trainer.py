"""The training loop shared by every method.

Determinism and resume: the order of samples in epoch e is a permutation seeded by (seed, e),
each image's augmentation is seeded by (seed, e, index), and `last.pt` holds the weights, the
optimizer, the method's state and the position in the epoch. A run killed at any point and
resumed with `--resume` therefore replays exactly the steps an uninterrupted run would take.

The pieces: `Schedule` (engine.schedule) says which images each step takes and its learning rate,
`TrainState` (engine.train_state) holds what a checkpoint resumes and takes one optimisation step,
`train_loader` (engine.loader) loads the images, `PseudoLabelAnalysis` (engine.label_analysis) is
the one observer that reads labels. `Trainer.train` below strings them together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from latteclip import distributed
from latteclip.config import RunConfig, save_config
from latteclip.data import ImageDataset
from latteclip.engine.checkpoint import load_checkpoint, save_checkpoint
from latteclip.engine.diagnostics import label_free_diagnostics
from latteclip.engine.evaluate import autocast_for_precision, evaluate
from latteclip.engine.features import extract_features, feature_loader, zero_shot_labels
from latteclip.engine.label_analysis import PseudoLabelAnalysis
from latteclip.engine.loader import train_loader
from latteclip.engine.metrics_log import MetricsLog
from latteclip.engine.results import RunResults, write_results
from latteclip.engine.run_folder import check_run_folder, prepare_run_folder
from latteclip.engine.schedule import Schedule
from latteclip.engine.session import Session, inference_payload, open_session, resolve_precision
from latteclip.engine.train_state import TrainState, check_resumable, run_identity
from latteclip.errors import LatteclipError
from latteclip.methods.base import TrainContext


def accelerate(model: torch.nn.Module, config: RunConfig) -> None:
    """Gradient checkpointing and in-place torch.compile (state-dict keys stay those of OpenCLIP).

    `dynamic`: batch sizes (the last evaluation batch, a filtered batch) and token lengths (texts are cut
    per step) vary, and one graph with symbolic sizes serves them all instead of one recompilation each.
    """
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if config.compile:
        model.visual.compile(dynamic=True)
        if hasattr(model, "transformer"):
            model.transformer.compile(dynamic=True)


class Trainer:
    def __init__(self, session: Session):
        self.session = session
        self.config = session.config
        self.method = session.method
        self.device = session.device
        self.run_dir = self.config.run_dir
        self.workers = distributed.workers_per_process(self.config.workers)
        self.inference = dataclasses.replace(self.config.inference, workers=self.workers)  # this process's share
        self.timings: dict[str, float] = {}
        self.schedule: Schedule | None = None
        self.unreadable: set[int] = set()
        # by id(dataset): the loaders the refreshes reuse (`feature_loader`), with their datasets
        self.feature_loaders: dict[int, tuple[ImageDataset, DataLoader]] = {}
        # without labelled images: the untrained classifier and its scores on the training images, for the diagnostics
        self.start: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self, test_set: ImageDataset, pristine: bool = False) -> dict:
        return evaluate(self.method, test_set, self.inference, self.pristine_key() if pristine else None)

    def features_of(
        self,
        encode,
        dataset: ImageDataset,
        desc: str = "features",
        cache_key: str | None = None,
        loader: DataLoader | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split's features with the run's device, batch size and workers (through `loader` if given)."""
        with torch.no_grad(), autocast_for_precision(self.config.precision, self.device):
            return extract_features(
                encode, dataset, self.device, self.config.eval_batch_size, self.workers, desc, cache_key, loader
            )

    def refresh_features(
        self, encode, dataset: ImageDataset, desc: str = "features"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What `TrainContext.extract_features` calls: ReCLIP's and CoFT's label refreshes encode the same split again
        and again, through one loader of that split whose workers are forked once, not once per pass beside the
        training loader's."""
        return self.features_of(encode, dataset, desc, loader=self.feature_loader(dataset))

    def feature_loader(self, dataset: ImageDataset) -> DataLoader:
        """The run's one loader of `dataset` (persistent workers), built at its first pass."""
        kept = self.feature_loaders.get(id(dataset))
        if kept is None:  # the dataset is kept with its loader: its id cannot pass to another object meanwhile
            loader = feature_loader(dataset, self.config.eval_batch_size, self.workers, persistent=True)
            kept = self.feature_loaders[id(dataset)] = (dataset, loader)
        return kept[1]

    def scores(self, dataset: ImageDataset, pristine: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The current classifier [C, d], cosine scores [N, C] of every image of `dataset` with it, and the readable
        mask."""
        was_training = self.method.model.training
        self.method.model.eval()
        key = self.pristine_key() if pristine else None
        features, valid = self.features_of(self.method.encode_images, dataset, "predict", key)
        with torch.no_grad(), autocast_for_precision(self.config.precision, self.device):
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
        report = label_free_diagnostics(
            start_scores,
            scores,
            valid,
            start_classifier,
            classifier,
            self.method.info.classnames,
            [s.path for s in train_set.samples],
            self.config.seed,
        )
        return {**report, **self.method.diagnostics()}

    def pristine_key(self) -> str:
        loaded = self.session.loaded
        return f"{loaded.model_name}|{loaded.weights_id}|{self.method.name}|encode_images"

    def zero_shot_labels(self, eval_train_set: ImageDataset) -> torch.Tensor:
        """c_zs for every training image with the frozen model, computed once and cached on disk."""
        info = self.method.info
        return zero_shot_labels(
            self.session.loaded,
            self.method.tokens,
            info.classnames,
            info.templates[0],
            eval_train_set,
            self.device,
            self.config.eval_batch_size,
            self.workers,
        )

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> RunResults:
        if distributed.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        # check_run_folder saw that last.pt is there
        resume_state = load_checkpoint(self.run_dir / "last.pt") if self.config.resume else None
        if resume_state is not None:
            check_resumable(resume_state["config"], run_identity(self.config, self.device), self.run_dir)
        if distributed.is_main():  # a fresh start: an earlier run's outputs must not be resumed or taken for ours
            prepare_run_folder(self.run_dir, fresh=resume_state is None)
        distributed.barrier()
        if distributed.is_main():
            save_config(self.config, self.run_dir / "config.yaml")
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
            self.feature_loaders.clear()  # their persistent workers end with the loaders

    def train(
        self, test_set: ImageDataset | None, log: MetricsLog, resume_state: dict | None, started: float
    ) -> RunResults:
        """Set up, then every step: learning rate, optimisation step, record, evaluation and checkpoint as asked."""
        cfg, method = self.config, self.method
        train_set = self.session.dataset("train", train_time=True)
        schedule = self.plan(len(train_set))
        self.setup_method(train_set, schedule, log, resume_state["step"] if resume_state else None)
        if test_set is None:
            self.remember_start()
        state = TrainState.create(method, cfg, self.device)
        accelerate(method.model, cfg)
        if resume_state is not None:
            state.resume(resume_state)
        self.unreadable = state.unreadable
        if resume_state is None and cfg.eval_every > 0 and test_set is not None:
            log.write({"step": 0, "eval/top1": self.evaluate(test_set, pristine=True)["top1"]})
        analysis = PseudoLabelAnalysis() if method.info.labelled else None  # reads the batch's true labels
        method.model.train()
        progress = tqdm(
            total=schedule.total_steps,
            initial=state.step,
            desc=f"train {method.name}",
            unit="step",
            dynamic_ncols=True,
            disable=not distributed.is_main(),
        )
        loss = math.nan
        for batch in train_loader(train_set, schedule, state.step, self.workers, self.device):
            self.note_unreadable(batch["skipped"], train_set, state)
            loss = self.step(state, schedule, batch, log, analysis, loss)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{cfg.lr * schedule.lr_scale(state.step - 1):.2e}")
            self.evaluate_and_save(state, schedule, test_set, log)
        progress.close()
        method.model.eval()
        report = self.evaluate(test_set) if test_set is not None else None
        if distributed.is_main():
            with self.eager():  # rank 0 alone: no compilation while the other ranks wait for it
                method.finish_training()
        if report is not None:
            log.write({"step": state.step, "eval/top1": report["top1"]})
        return self.finish(report, log, steps=state.step, started=started)

    def plan(self, num_samples: int) -> Schedule:
        """The run's steps; the global batch must split evenly over the processes."""
        cfg = self.config
        epochs = cfg.epochs if cfg.epochs is not None else self.method.default_epochs(num_samples)
        self.schedule = Schedule.for_run(cfg, num_samples, epochs)
        if self.schedule.batch_size % distributed.world_size():
            raise LatteclipError(
                f"--batch-size {self.schedule.batch_size} must be a multiple of the number of "
                f"processes ({distributed.world_size()})"
            )
        return self.schedule

    def setup_method(
        self, train_set: ImageDataset, schedule: Schedule, log: MetricsLog, resume_step: int | None
    ) -> None:
        """The method's one-off work before the first step (zero-shot labels, descriptions, features)."""
        t0 = time.time()
        needs_labels = self.method.needs_zero_shot_labels
        zs_labels = self.zero_shot_labels(self.session.dataset("train")) if needs_labels else None
        self.timings["zero_shot_labels_s"] = time.time() - t0

        def method_log(record: dict) -> None:
            # a resumed run's set-up repeats what the killed run logged up to its checkpoint: kept once, not twice
            if resume_step is None or record.get("step", 0) > resume_step:
                log.write(record)

        ctx = TrainContext(
            train_set,
            zs_labels,
            self.run_dir,
            self.config.seed,
            self.config.store,
            method_log,
            extract_features=self.refresh_features,
            eval_transform=self.session.loaded.eval_transform(),
            steps_per_epoch=schedule.steps_per_epoch,
            total_steps=schedule.total_steps,
            train_fraction=self.config.train_fraction,
        )
        t0 = time.time()
        self.method.setup_training(ctx)
        self.timings["setup_s"] = time.time() - t0

    def step(
        self,
        state: TrainState,
        schedule: Schedule,
        batch: dict,
        log: MetricsLog,
        analysis: PseudoLabelAnalysis | None,
        last_loss: float,
    ) -> float:
        """One step of the loop (learning rate, optimisation step, record, step counter); returns the loss shown.

        Ranks agree first: when any rank's share of the batch is all unreadable, every rank skips the step,
        since a rank that stepped alone would wait forever for the others in the gradient all-reduce.
        """
        step, cfg = state.step, self.config
        scale = schedule.lr_scale(step)
        state.set_learning_rate(scale)
        state.step += 1
        if not distributed.every_rank(batch["image"] is not None):
            return last_loss
        batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        result = state.optimisation_step(batch, step)
        record = {"step": step + 1, "epoch": step // schedule.steps_per_epoch, "lr": cfg.lr * scale, **result.metrics}
        if analysis is not None:
            record.update(analysis.record(batch, result))
        if step == 0 or (cfg.log_every > 0 and (step + 1) % cfg.log_every == 0):
            log.write(record)
        return result.loss.item()

    def evaluate_and_save(
        self, state: TrainState, schedule: Schedule, test_set: ImageDataset | None, log: MetricsLog
    ) -> None:
        """After a step: the evaluation and last.pt the run asks for (the last evaluation comes after training)."""
        step, cfg = state.step, self.config
        if test_set is not None and cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < schedule.total_steps:
            log.write({"step": step, "eval/top1": self.evaluate(test_set)["top1"]})
        if step == schedule.total_steps or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0):
            self.save_last(state, log)

    def eager(self) -> contextlib.AbstractContextManager:
        """Run compiled modules eagerly (for work one rank does alone): with --compile only."""
        return torch.compiler.set_stance("force_eager") if self.config.compile else contextlib.nullcontext()

    def note_unreadable(self, skipped: list[int], dataset: ImageDataset, state: TrainState) -> None:
        for index in skipped:
            if index not in state.unreadable:
                state.unreadable.add(index)
                warnings.warn(f"unreadable training image skipped: {dataset.samples[index].path}", stacklevel=2)

    def save_last(self, state: TrainState, log: MetricsLog) -> None:
        payload = state.payload(log.lines)  # every rank: the RNG states of GPUs are gathered
        if distributed.is_main():
            save_checkpoint(self.run_dir / "last.pt", payload)

    def evaluated_on(self) -> str:
        cfg = self.config
        return f"{cfg.eval_dataset} {cfg.eval_root}" if cfg.eval_dataset else f"{cfg.dataset} test split"

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
            "evaluated_on": self.evaluated_on() if report else None,
            "top1": report["top1"] if report else None,
            "test": report,
            "diagnostics": diagnostics,
            "unreadable_train_images": len(distributed.union(self.unreadable, self.device)),  # every rank's slices
            "unreadable_test_images": report["unreadable"] if report else 0,
            "schedule": self.schedule.record() if self.schedule else None,
            "precision": resolve_precision(cfg.precision, self.device),
            "device_type": self.device.type,
            "timings": self.timings,
        }
        payload["results"] = {"top1": results["top1"], "steps": steps}
        if distributed.is_main():
            save_checkpoint(self.run_dir / "final.pt", payload)
            write_results(self.run_dir, results)
            # a finished run is never resumed: its resume state (weights, optimizer moments, RNG) would only fill
            # disks, three times final.pt's size per run, hundreds of runs in a paper's tables
            (self.run_dir / "last.pt").unlink(missing_ok=True)
        distributed.barrier()
        return results


def use_deterministic_kernels() -> None:
    """--deterministic: CUDA kernels that give the same bits every time (scatter-adds, embedding backward, cuBLAS)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before the model loads
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def run_training(config: RunConfig) -> RunResults:
    """Train (or evaluate) one run; under torchrun every process calls this and rank 0 writes."""
    from latteclip.engine.session import pick_device

    check_run_folder(config)  # before anything is loaded: a refusal costs nothing and touches nothing
    device = pick_device(config.device)
    joined_here = not distributed.is_distributed() and distributed.init_from_environment(device.type)
    if config.deterministic and device.type == "cuda":  # CPU kernels are deterministic already
        use_deterministic_kernels()
    try:
        results = Trainer(open_session(config, device)).run()
    except BaseException:
        if joined_here:
            distributed.leave(wait_for_others=False)  # the others may be gone: never wait on them
        raise
    if joined_here:
        distributed.leave(wait_for_others=True)
    return results
