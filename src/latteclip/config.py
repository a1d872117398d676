"""Run configuration: merged in a fixed order, then frozen and saved with the run.

Order (later wins): package defaults (`configs/defaults.yaml`), the dataset's published schedule
(`configs/datasets/<dataset>.yaml`: epochs, warm-up and learning rate of the LatteCLIP authors' runs,
shared by every method that fine-tunes CLIP), the method's defaults (`configs/methods/<method>.yaml`),
a method's own per-dataset file when one exists (`configs/<method>/<dataset>.yaml`), the user's
`--config FILE`, then command-line flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from latteclip.errors import LatteclipError


def comma_list(text: str) -> list[str]:
    """A list spelled as one string, on the command line or in a config: "a, b,,c" -> [a, b, c]."""
    return [part.strip() for part in text.split(",") if part.strip()]


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
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    grad_checkpointing: bool = False  # recompute activations in backward: large models in less memory
    compile: bool = False  # torch.compile the image tower and the text transformer (in place)
    # running
    device: str = "auto"
    workers: int = 4
    eval_every: int = 200
    checkpoint_every: int = 100
    log_every: int = 10
    eval_batch_size: int = 256
    output: str = "runs"
    name: str | None = None
    resume: bool = False
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


def _package_yaml(*parts: str) -> dict[str, Any]:
    path = resources.files("latteclip").joinpath("configs", *parts)
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


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


def _merge(base: dict[str, Any], update: dict[str, Any], origin: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if key not in FIELD_NAMES:
            raise LatteclipError(f"{origin}: unknown option '{key}'")
        if key in ("method_options", "describe"):
            if not isinstance(value, dict):
                raise LatteclipError(f"{origin}: {key} must be a mapping")
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def resolve_config(cli: dict[str, Any], config_file: str | None = None) -> RunConfig:
    """Merge defaults, method and dataset files, the user's file, then the command line."""
    user = read_yaml(config_file) if config_file else {}
    method = cli.get("method") or user.get("method") or _package_yaml("defaults.yaml").get("method", "zeroshot")
    dataset = cli.get("dataset") or user.get("dataset") or _package_yaml("defaults.yaml").get("dataset", "eurosat")
    merged: dict[str, Any] = {}
    merged = _merge(merged, _package_yaml("defaults.yaml"), "configs/defaults.yaml")
    merged = _merge(merged, _package_yaml("datasets", f"{dataset}.yaml"), f"configs/datasets/{dataset}.yaml")
    merged = _merge(merged, _package_yaml("methods", f"{method}.yaml"), f"configs/methods/{method}.yaml")
    merged = _merge(merged, _package_yaml(method, f"{dataset}.yaml"), f"configs/{method}/{dataset}.yaml")
    merged = _merge(merged, user, str(config_file))
    merged = _merge(merged, {k: v for k, v in cli.items() if v is not None}, "command line")
    if "betas" in merged:
        merged["betas"] = tuple(merged["betas"])
    try:
        return RunConfig(**merged)
    except TypeError as err:
        raise LatteclipError(f"bad configuration: {err}") from err


def save_config(config: RunConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
