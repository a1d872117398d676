"""The optimizer factory: parameter groups with learning-rate scales, then AdamW or SGD from explicit arguments.

In the manner of timm's `create_optimizer_v2`: the factory takes the values it uses, not the run's
config, so a notebook or a benchmark builds the same optimizer a run would (`optimizer_for_run`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from latteclip.config import RunConfig

ParamGroups = list[tuple[float, list[torch.Tensor]]]


def scaled_groups(params: Iterable[torch.Tensor | dict]) -> ParamGroups:
    """A method's `parameters()` as (learning-rate scale, trainable tensors) pairs.

    Methods hand tensors (trained at the base rate) and/or groups {"params": [...], "lr_scale": k}
    for parts trained at k times the base rate (prompts and adapters beside a fully fine-tuned encoder).
    """
    plain: list[torch.Tensor] = []
    groups: ParamGroups = []
    for entry in params:
        if isinstance(entry, dict):
            groups.append((float(entry.get("lr_scale", 1.0)), [p for p in entry["params"] if p.requires_grad]))
        elif entry.requires_grad:
            plain.append(entry)
    if plain or not groups:  # the base-rate tensors come first, as before methods could hand groups
        groups.insert(0, (1.0, plain))
    return groups


def create_optimizer(
    groups: ParamGroups,
    name: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """AdamW (CLIP fine-tuning) or SGD with momentum (ReCLIP), each group at `lr` times its scale.

    AdamW: gains, biases and the logit scale (1-D tensors) get no weight decay, as in OpenCLIP.
    SGD: weight decay on every tensor, as the ReCLIP authors ran it (it trains only LayerNorms).
    """
    if name == "sgd":
        param_groups = [{"params": params, "lr": lr * scale} for scale, params in groups]
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name != "adamw":
        raise ValueError(f"unknown optimizer {name!r}: adamw or sgd")
    param_groups = []
    for scale, params in groups:
        param_groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr * scale})
        matrices = [p for p in params if p.ndim >= 2]
        param_groups.append({"params": matrices, "weight_decay": weight_decay, "lr": lr * scale})
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps)


def optimizer_for_run(groups: ParamGroups, config: RunConfig) -> torch.optim.Optimizer:
    """The optimizer a run with `config` trains with."""
    return create_optimizer(
        groups, config.optimizer, config.lr, config.weight_decay, tuple(config.betas), config.eps, config.sgd_momentum
    )
