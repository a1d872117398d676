"""Run configuration: merged in a fixed order, then frozen and saved with the run.

Order (later wins): the defaults declared on `RunConfig` (each with its help text), the dataset's published schedule
(`configs/datasets/<dataset>.yaml`: epochs, warm-up and learning rate of the LatteCLIP authors' runs,
shared by every method that fine-tunes CLIP), the method's defaults (`configs/methods/<method>.yaml`),
a method's own per-dataset file when one exists (`configs/<method>/<dataset>.yaml`), the user's
`--config FILE`, then command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from latteclip.errors import LatteclipError
from latteclip.values import at_least, coerce


def comma_list(text: str) -> list[str]:
    """A list spelled as one string, on the command line or in a config: "a, b,,c" -> [a, b, c]."""
    return [part.strip() for part in text.split(",") if part.strip()]


def machine_cpus() -> int:
    """CPU cores this process may use: the default number of data-loading workers."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# What changing an option does, which decides where it counts (the sets below are derived from it):
#   result: what the run computes. log: what it records along the way (evaluations, checkpoints, log lines).
#   speed: how fast, on which hardware. data: where the input files are. name: which run folder.
#   files: where outputs and description stores are written. call: this call only (resume, overwrite).
OPTION_KINDS = ("result", "log", "speed", "data", "name", "files", "call")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    kind: str = "result",
    choices: tuple[str, ...] | None = None,
    flag: bool = True,
    factory: Any = dataclasses.MISSING,
    group: str | None = None,
) -> Any:
    """A field of a settings dataclass (RunConfig, a method's options, DescribeSettings) with what its command-line
    flag shows: the help text, its kind (OPTION_KINDS), its choices, and the help section it is listed under."""
    if kind not in OPTION_KINDS:
        raise ValueError(f"option kind {kind} is not one of {OPTION_KINDS}")
    metadata = {"help": help, "kind": kind, "choices": choices, "flag": flag, "group": group}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Inference:
    """How passes over images run (evaluation, features, predictions): the four values always travel together."""

    device: str = "auto"  # auto, cpu, cuda, cuda:N
    batch_size: int = 256  # images per batch
    workers: int = 0  # data-loading worker processes
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU

    def check(self) -> Inference:
        """Refuses a value that would fail later, naming the flag that sets it."""
        at_least(self.batch_size, 1, "--batch-size")
        at_least(self.workers, 0, "--workers")
        return self


AUGMENT_POLICIES = ("clip", "trivial-augment-wide", "randaugment")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")
EPOCH_LENGTHS = ("authors", "batches")
PROMPT_SETS = ("latteclip", "clip")


@dataclass(frozen=True)
class RunConfig:
    """Every option of a run, merged once (resolve_config) and then frozen: a changed copy is `dataclasses.replace`."""

    # what to adapt, and to which data
    method: str = option("zeroshot", help="zeroshot, flyp_pl, oracle, latteclip, reclip, coft, coft_plus")
    model: str = option("ViT-B-32", help="OpenCLIP model name (ViT-B-32, ...) or hf-hub:org/name")
    pretrained: str = option(
        "laion2b_s34b_b79k", help="pretrained tag, weights file (.pt/.bin/.safetensors), or 'random'"
    )
    dataset: str = option(
        "eurosat", help="eurosat, dtd, ..., folder (a folder per class), csv (path,label) or images (unlabeled)"
    )
    root: str = option(
        "", help="the dataset's folder, archive, or CSV file (images: a folder, or a .txt list of paths)", kind="data"
    )
    limit: int | None = option(
        None, help="a seeded subset of N images per split (uniform for training, class-balanced for evaluation)"
    )
    # kind "result": a share is another run; omitted from to_dict at 1.0, so the keys of runs saved before it existed
    # (run folders, the archive, pre-training's cache) stay the same
    train_fraction: float = option(
        1.0,
        help="a seeded share of the training images (drawn by position, labels unread; nested: a smaller share is "
        "part of a larger one), the test split untouched: the paper's Figure 6",
    )
    seed: int = option(0, help="seed of the split, the subset, sampling and initialisation")
    classnames: str | None = option(
        None,
        help="file mapping folder names to prompt names (JSON, or 'key: name' lines); "
        "for --dataset images: one class name per line, or a JSON list",
    )
    templates: str | None = option(None, help="file of prompt templates with {} (JSON list or one per line)")
    domain: str | None = option(None, help="the domain word used in description prompts (e.g. 'land use')")
    split_file: str | None = option(None, help="a CoOp split JSON, or 'none' for the seeded 50/20/30 split")
    prompt_set: str = option(
        "latteclip",
        choices=PROMPT_SETS,
        help="class names and template of a paper dataset: latteclip (default: the authors' runs, CoOp "
        "names lower-cased, one template) or clip (CLIP's names and templates)",
    )
    # labelled images to measure accuracy on instead of the dataset's test split (required for accuracy on `images`)
    eval_dataset: str | None = option(
        None,
        help="a labelled dataset (folder, csv, eurosat, ...) with the same class names to "
        "measure accuracy on instead of the test split",
    )
    eval_root: str | None = option(None, help="the --eval-dataset's folder, archive or CSV file")
    # optimisation (method.md 1.3 reference values)
    batch_size: int = option(512, help="images per optimisation step (the global batch over all processes)")
    lr: float = option(1e-7, help="base learning rate (AdamW)")
    weight_decay: float = option(0.2, help="AdamW weight decay")
    betas: tuple[float, float] = option((0.9, 0.98), help="AdamW betas", flag=False)
    eps: float = option(1e-6, help="AdamW epsilon", flag=False)
    warmup_steps: int = option(50, help="linear warm-up steps before the cosine schedule")
    lr_schedule: str = option(
        "cosine",
        choices=LR_SCHEDULES,
        help="cosine: --warmup-steps of linear warm-up, then cosine decay (LatteCLIP's authors); "
        "constant: the base rate at every step, no warm-up (ReCLIP's authors)",
    )
    epoch_length: str = option(
        "authors",
        choices=EPOCH_LENGTHS,
        help="authors: an epoch is --authors-steps-per-epoch steps, as the LatteCLIP authors' "
        "loader made them on the full training split (a --limit subset counts batches); "
        "batches: floor(N / batch size) steps, one pass in full batches",
    )
    authors_steps_per_epoch: int | None = option(
        None,
        help="the LatteCLIP authors' steps per epoch on the dataset's "
        "full training split (configs/datasets/ set it; none: unknown)",
    )
    max_steps: int | None = option(
        None,
        help="stop at this step or after --epochs, whichever first (default: --epochs alone, "
        "the authors' runs; the paper's text: 2000 with 50 epochs)",
    )
    epochs: int | None = option(50, help="passes over the training split (or --max-steps, whichever ends first)")
    optimizer: str = option("adamw", choices=OPTIMIZERS, help="adamw, or sgd (ReCLIP's, with --sgd-momentum)")
    sgd_momentum: float = option(0.9, help="momentum of --optimizer sgd")
    grad_clip: float | None = option(None, help="clip the gradient norm to this value (none: no clipping)")
    augment: bool = option(True, help="train-time augmentation: the random crop, then --augment-policy")
    augment_policy: str = option(
        "clip",
        choices=AUGMENT_POLICIES,
        help="train-time augmentation after the crop: clip (the paper's colour jitter and grey), "
        "trivial-augment-wide or randaugment",
    )
    precision: str = option("auto", choices=PRECISIONS, help="auto: bf16 autocast on GPUs with native bf16, else fp32")
    grad_checkpointing: bool = option(
        False, help="recompute activations in the backward pass: large models in less memory"
    )
    compile: bool = option(False, help="torch.compile the image tower and the text transformer (GPU)")
    # kind "call": CPU results (all that reuse and the archive hold) do not depend on it; a resume keeps it
    # (train_state)
    deterministic: bool = option(
        False,
        help="deterministic CUDA kernels, so that a GPU run repeats bit for bit "
        "(slower); CPU runs repeat exactly without it",
        kind="call",
    )
    # running
    device: str = option("auto", help="auto, cpu, cuda, cuda:1", kind="speed")
    workers: int = option(help="data-loading worker processes", kind="speed", factory=machine_cpus)
    eval_every: int = option(200, help="evaluate on test every N steps (0: only at the end)", kind="log")
    checkpoint_every: int = option(100, help="write last.pt every N steps (what --resume continues from)", kind="log")
    log_every: int = option(10, help="log training metrics every N steps", kind="log")
    eval_batch_size: int = option(256, help="images per batch in feature and evaluation passes", kind="speed")
    output: str = option("runs", help="folder that holds run folders", kind="files")
    name: str | None = option(None, help="run folder name (default METHOD-DATASET-sSEED)", kind="name")
    resume: bool = option(False, help="continue the run in the run folder from last.pt", kind="call")
    overwrite: bool = option(
        False, help="replace a finished or interrupted run of the same name (refused otherwise)", kind="call"
    )
    store: str | None = option(None, help="description store (SQLite) for methods that read descriptions", kind="files")
    method_options: dict[str, Any] = option(
        help="the method's own options (configs/methods/<method>.yaml)", flag=False, factory=dict
    )
    # options of the description stage (`latteclip describe`, `zeroshot --lmm`), here so one file configures every
    # command
    describe: dict[str, Any] = option(help="options of the description stage", flag=False, factory=dict)

    @property
    def inference(self) -> Inference:
        """How this run's evaluation and feature passes run."""
        return Inference(self.device, self.eval_batch_size, self.workers, self.precision)

    @property
    def run_dir(self) -> Path:
        return Path(self.output) / (self.name or f"{self.method}-{self.dataset}-s{self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """Every option, except `train_fraction` at its default 1.0: runs saved before the option existed keep their
        keys (same_config, the archive, pre-training's cache), and a run on a share of the data has a key of its own."""
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        if self.train_fraction == 1.0:
            del data["train_fraction"]
        return data


FIELD_NAMES = {f.name for f in dataclasses.fields(RunConfig)}
FIELD_TYPES = typing.get_type_hints(RunConfig)
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def fields_of_kind(*kinds: str) -> frozenset[str]:
    return frozenset(name for name, f in FIELDS.items() if f.metadata["kind"] in kinds)


# Derived from the kinds, so that a new option counts everywhere the moment it is declared:
NOT_COMPARED = fields_of_kind("call")  # a finished run is reused when everything else is equal
RESUME_MAY_CHANGE = fields_of_kind("call", "files", "name", "data", "speed")  # a resumed run replays the same steps
NOT_IN_WEIGHTS_KEY = fields_of_kind(
    "call", "files", "name", "speed", "log"
)  # pre-training's cache key (root: by resolved path)


def _package_yaml(*parts: str) -> dict[str, Any]:
    path = resources.files("latteclip").joinpath("configs", *parts)
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def package_defaults() -> dict[str, Any]:
    """Every option's value before a method, dataset, user file or flag sets it (what `--help` shows)."""
    defaults = RunConfig()
    return {**defaults.to_dict(), "train_fraction": defaults.train_fraction}  # to_dict leaves the default share out


def read_yaml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise LatteclipError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise LatteclipError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise LatteclipError(f"config file {path} must hold a mapping of option: value")
    return data


def _label(key: str, origin: str) -> str:
    """How the user spelled an option: its flag on the command line, `file: key` in a config file."""
    return "--" + key.replace("_", "-") if origin == "command line" else f"{origin}: {key}"


def _merge(base: dict[str, Any], update: dict[str, Any], origin: str, origins: dict[str, str]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if key not in FIELD_NAMES:
            raise LatteclipError(f"{origin}: unknown option '{key}'")
        value = coerce(FIELD_TYPES[key], value, _label(key, origin))
        if key in ("method_options", "describe"):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
        origins[key] = origin
    return merged


# Lower bounds of the numeric options: (minimum, whether the minimum itself is refused).
MINIMUMS: dict[str, tuple[float, bool]] = {
    "batch_size": (1, False),
    "eval_batch_size": (1, False),
    "max_steps": (1, False),
    "epochs": (1, False),
    "authors_steps_per_epoch": (1, False),
    "limit": (1, False),
    "train_fraction": (0, True),
    "lr": (0, True),
    "eps": (0, True),
    "grad_clip": (0, True),
    "weight_decay": (0, False),
    "warmup_steps": (0, False),
    "workers": (0, False),
    "eval_every": (0, False),
    "checkpoint_every": (0, False),
    "log_every": (0, False),
    "seed": (0, False),
}
DEVICE_PATTERN = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def check_values(merged: dict[str, Any], origins: dict[str, str]) -> None:
    """Ranges and choices of the merged options, each refusal naming where the value came from."""
    for key, (minimum, strictly) in MINIMUMS.items():
        if key in merged:
            at_least(merged[key], minimum, _label(key, origins.get(key, "defaults")), strictly)
    if merged.get("train_fraction", 1.0) > 1:
        label = _label("train_fraction", origins.get("train_fraction", "defaults"))
        raise LatteclipError(
            f"{label} is a share of the training images: above 0 and at most 1, not {merged['train_fraction']}"
        )
    for beta in merged.get("betas", ()):
        if not 0 <= beta < 1:
            raise LatteclipError(
                f"{_label('betas', origins.get('betas', 'defaults'))} must be two numbers in [0, 1), not "
                f"{list(merged['betas'])}"
            )
    for key, spec in FIELDS.items():
        choices = spec.metadata["choices"]
        if choices and key in merged and merged[key] not in choices:
            raise LatteclipError(
                f"{_label(key, origins.get(key, 'defaults'))} must be one of {', '.join(choices)}, not {merged[key]!r}"
            )
    if not DEVICE_PATTERN.fullmatch(merged.get("device", "auto")):
        raise LatteclipError(
            f"{_label('device', origins['device'])} must be auto, cpu, cuda or cuda:N, not {merged['device']!r}"
        )


def resolve_config(cli: dict[str, Any], config_file: str | None = None) -> RunConfig:
    """Merge defaults, method and dataset files, the user's file, then the command line."""
    user = read_yaml(config_file) if config_file else {}
    method = cli.get("method") or user.get("method") or RunConfig.method
    dataset = cli.get("dataset") or user.get("dataset") or RunConfig.dataset
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    merged = _merge(merged, _package_yaml("datasets", f"{dataset}.yaml"), f"configs/datasets/{dataset}.yaml", origins)
    merged = _merge(merged, _package_yaml("methods", f"{method}.yaml"), f"configs/methods/{method}.yaml", origins)
    merged = _merge(merged, _package_yaml(method, f"{dataset}.yaml"), f"configs/{method}/{dataset}.yaml", origins)
    merged = _merge(merged, user, f"config file {config_file}", origins)
    merged = _merge(merged, {k: v for k, v in cli.items() if v is not None}, "command line", origins)
    check_values(merged, origins)
    try:
        return RunConfig(**merged)
    except TypeError as err:
        raise LatteclipError(f"bad configuration: {err}") from err


def configure(values: dict[str, Any], config_file: str | None = None) -> RunConfig:
    """`resolve_config`, then what a run needs of it: a dataset root, kept as an absolute path when it exists, so
    that the run folder stays usable from any directory."""
    config = resolve_config(values, config_file)
    if not config.root:
        raise LatteclipError("no dataset root: pass --root DIR (or set root: in the --config file)")
    paths = {
        name: str(Path(value).resolve())
        for name in ("root", "eval_root")
        if (value := getattr(config, name)) and Path(value).exists()
    }
    return dataclasses.replace(config, **paths)


def save_config(config: RunConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
