"""Run configuration: merged in a fixed order, then frozen and saved with the run.

Order (later wins): package defaults (`configs/defaults.yaml`), the dataset's published schedule
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


@dataclass
class RunConfig:
    # what to adapt, and to which data
    method: str = "zeroshot"
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    dataset: str = "eurosat"
    root: str = ""
    limit: int | None = None
    seed: int = 0
    classnames: str | None = None
    templates: str | None = None
    domain: str | None = None
    split_file: str | None = None
    prompt_set: str = "latteclip"  # paper datasets: the LatteCLIP authors' class names and template, or clip's own
    # labelled images to measure accuracy on instead of the dataset's test split (required for accuracy on `images`)
    eval_dataset: str | None = None
    eval_root: str | None = None
    # optimisation (method.md 1.3 reference values)
    batch_size: int = 512
    lr: float = 1e-7
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    max_steps: int | None = None  # None: --epochs alone decides (the authors' runs); the paper's text: 2000 with 50 epochs
    epochs: int | None = 50  # None: the method's own rule (ReCLIP: min(100, N / 5000 + 2))
    optimizer: str = "adamw"  # adamw, or sgd (ReCLIP's, with sgd_momentum)
    sgd_momentum: float = 0.9
    grad_clip: float | None = None
    augment: bool = True
    augment_policy: str = "clip"  # clip: the paper's crop + colour jitter + grey; trivial-augment-wide or randaugment on top of the crop
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    grad_checkpointing: bool = False  # recompute activations in backward: large models in less memory
    compile: bool = False  # torch.compile the image tower and the text transformer (in place)
    # running
    device: str = "auto"
    workers: int = field(default_factory=machine_cpus)
    eval_every: int = 200
    checkpoint_every: int = 100
    log_every: int = 10
    eval_batch_size: int = 256
    output: str = "runs"
    name: str | None = None
    resume: bool = False
    overwrite: bool = False  # a fresh run may replace a finished or interrupted one in its folder
    store: str | None = None  # description store (SQLite) for methods that read descriptions
    method_options: dict[str, Any] = field(default_factory=dict)
    # options of the description stage (`latteclip describe`, `zeroshot --lmm`), here so one file configures every command
    describe: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.output) / (self.name or f"{self.method}-{self.dataset}-s{self.seed}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data


FIELD_NAMES = {f.name for f in dataclasses.fields(RunConfig)}
FIELD_TYPES = typing.get_type_hints(RunConfig)


def _package_yaml(*parts: str) -> dict[str, Any]:
    path = resources.files("latteclip").joinpath("configs", *parts)
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def package_defaults() -> dict[str, Any]:
    """Every option's value before a method, dataset, user file or flag sets it (what `--help` shows)."""
    return {**RunConfig().to_dict(), **_package_yaml("defaults.yaml")}


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
    "batch_size": (1, False), "eval_batch_size": (1, False), "max_steps": (1, False), "epochs": (1, False),
    "limit": (1, False), "lr": (0, True), "eps": (0, True), "grad_clip": (0, True), "weight_decay": (0, False),
    "warmup_steps": (0, False), "workers": (0, False), "eval_every": (0, False), "checkpoint_every": (0, False),
    "log_every": (0, False), "seed": (0, False),
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_POLICIES = ("clip", "trivial-augment-wide", "randaugment")
DEVICE_PATTERN = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def check_values(merged: dict[str, Any], origins: dict[str, str]) -> None:
    """Ranges and choices of the merged options, each refusal naming where the value came from."""
    for key, (minimum, strictly) in MINIMUMS.items():
        if key in merged:
            at_least(merged[key], minimum, _label(key, origins.get(key, "defaults")), strictly)
    for beta in merged.get("betas", ()):
        if not 0 <= beta < 1:
            raise LatteclipError(f"{_label('betas', origins.get('betas', 'defaults'))} must be two numbers in [0, 1), not {list(merged['betas'])}")
    if merged.get("precision", "auto") not in PRECISIONS:
        raise LatteclipError(f"{_label('precision', origins['precision'])} must be one of {', '.join(PRECISIONS)}, not {merged['precision']!r}")
    if merged.get("augment_policy", "clip") not in AUGMENT_POLICIES:
        raise LatteclipError(f"{_label('augment_policy', origins['augment_policy'])} must be one of {', '.join(AUGMENT_POLICIES)}, "
                             f"not {merged['augment_policy']!r}")
    if not DEVICE_PATTERN.fullmatch(merged.get("device", "auto")):
        raise LatteclipError(f"{_label('device', origins['device'])} must be auto, cpu, cuda or cuda:N, not {merged['device']!r}")


def resolve_config(cli: dict[str, Any], config_file: str | None = None) -> RunConfig:
    """Merge defaults, method and dataset files, the user's file, then the command line."""
    user = read_yaml(config_file) if config_file else {}
    method = cli.get("method") or user.get("method") or _package_yaml("defaults.yaml").get("method", "zeroshot")
    dataset = cli.get("dataset") or user.get("dataset") or _package_yaml("defaults.yaml").get("dataset", "eurosat")
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    merged = _merge(merged, _package_yaml("defaults.yaml"), "configs/defaults.yaml", origins)
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


def save_config(config: RunConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
