"""What a method is: a small object that says what one training step does; the engine owns the loop.

A method is built for inference from the model, the dataset's names and its options (so that
`eval` and `predict` can rebuild it from a checkpoint), and `setup_training` adds what only
training needs (the training set, cached zero-shot labels, descriptions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from latteclip.data import DatasetInfo, ImageDataset
from latteclip.errors import LatteclipError
from latteclip.methods.options import NoOptions
from latteclip.models import LoadedModel, TokenCache, class_text_features
from latteclip.models.losses import capped_scale


@dataclass
class TrainContext:
    """What the engine hands a method before the first step."""

    train_set: ImageDataset
    zero_shot_labels: torch.Tensor | None  # [len(train_set)], -1 for unreadable images
    run_dir: Path
    seed: int
    store: str | None = None
    log: Callable[[dict[str, Any]], None] = field(default=lambda record: None)
    eval_transform: Callable | None = None  # the evaluation transform, for passes over training images
    # the engine's feature extractor: (image encoder, dataset, desc=...) -> (features [N, d], readable mask [N]),
    # run without gradients on the run's device with its evaluation batch size and workers; every call on the same
    # dataset goes through one loader whose workers are forked once
    extract_features: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    steps_per_epoch: int = 1  # optimizer steps in one epoch (a pass, or the authors' count: engine.schedule)
    total_steps: int = 1  # optimizer steps of the whole run: methods with phases give each a share of it
    train_fraction: float = 1.0  # the share of the training split the run keeps (which description stage drew for it)


@dataclass
class StepResult:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    pseudo_labels: torch.Tensor | None = None  # the labels trained on, for the pseudo-label analysis
    kept: torch.Tensor | None = (
        None  # which of those labels the method judged clean, for the analysis of that judgement
    )
    state: dict[str, Any] = field(default_factory=dict)  # what after_optimizer_step needs


class Method:
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    trains: ClassVar[bool] = True
    reads_train_labels: ClassVar[bool] = False  # only the supervised oracle
    needs_zero_shot_labels: ClassVar[bool] = False
    # False when predictions use more than normalize(model.encode_image) and class weights (adapters, projections)
    exportable_to_open_clip: ClassVar[bool] = True

    def __init__(self, loaded: LoadedModel, info: DatasetInfo, options: Any, device: torch.device):
        self.loaded = loaded
        self.model = loaded.model
        self.info = info
        self.options = options
        self.device = device
        self.tokens = TokenCache(loaded.tokenizer)

    # --- training -------------------------------------------------------------------------
    @staticmethod
    def default_epochs(num_samples: int) -> int:
        """Epochs when the config leaves `epochs` unset (null): methods whose authors ran their own rule say it here."""
        raise LatteclipError("epochs is not set: pass --epochs N (or epochs: N in the --config file)")

    def setup_training(self, ctx: TrainContext) -> None:
        self.ctx = ctx

    def parameters(self) -> Iterable[torch.nn.Parameter | dict]:
        """What the optimizer trains; by default the whole CLIP model (both towers).

        Entries may also be groups {"params": [...], "lr_scale": k}, trained at k times the base rate.
        """
        return [p for p in self.model.parameters() if p.requires_grad]

    def training_step(self, batch: dict, step: int) -> StepResult:
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor:
        """exp of the model's temperature, detached and capped at 100: the scale of cosine logits for methods that do
        not train it."""
        return capped_scale(self.model.logit_scale.detach())

    def after_optimizer_step(self, batch: dict, result: StepResult, step: int) -> None:
        """State updates that follow the weights (momentum, EMA encoders, queues)."""

    def finish_training(self) -> None:
        """Write the method's own artefacts into the run folder (for the report) after the last step."""

    def diagnostics(self) -> dict[str, Any]:
        """The method's own label-free numbers, added to results.json's diagnostics (runs without labels)."""
        return {}

    # --- inference ------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images), dim=-1)

    def classifier(self) -> torch.Tensor:
        """Normalised class weights [C, d] for the current model: class text features by default."""
        return self.zero_shot_classifier()

    def zero_shot_classifier(self) -> torch.Tensor:
        """Normalised class text features [C, d] of the current text tower with the first template."""
        return class_text_features(self.model, self.tokens, self.info.classnames, self.info.templates[:1], self.device)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore method state saved with a checkpoint."""
