"""Methods: one module each, registered here by name (a new method is one file, its options class in
`methods/options.py`, and a line in REGISTRY and in OPTIONS)."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from typing import Any

from latteclip.errors import LatteclipError
from latteclip.methods.options import OPTIONS
from latteclip.values import coerce

REGISTRY: dict[str, str] = {
    "zeroshot": "latteclip.methods.zeroshot:ZeroShot",
    "flyp_pl": "latteclip.methods.flyp:FlypPseudoLabels",
    "oracle": "latteclip.methods.flyp:SupervisedOracle",
    "latteclip": "latteclip.methods.latteclip:LatteCLIP",
    "reclip": "latteclip.methods.reclip:Reclip",
    "coft": "latteclip.methods.coft:Coft",
    "coft_plus": "latteclip.methods.coft:CoftPlus",
    "pretrain": "latteclip.methods.pretrain:ContrastivePretraining",
}


def options_of(name: str) -> type:
    """The options dataclass of a registered method, without importing the method (nor torch)."""
    if name not in REGISTRY:
        raise LatteclipError(f"unknown method '{name}': choose one of {', '.join(sorted(REGISTRY))}")
    return OPTIONS[name]


def get_method(name: str) -> type:
    if name not in REGISTRY:
        raise LatteclipError(f"unknown method '{name}': choose one of {', '.join(sorted(REGISTRY))}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def resolved_options(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Every option of method `name`: the given values over the defaults (what a run of it computes with)."""
    options_cls = options_of(name)
    kinds = typing.get_type_hints(options_cls)
    given = {k: coerce(kinds[k], v, f"method option {k}") for k, v in values.items() if k in kinds}
    return dataclasses.asdict(options_cls(**given))


def build_options(method_cls: type, values: dict[str, Any]) -> Any:
    """The method's options dataclass from config values, rejecting options it does not have."""
    known = {f.name: f for f in dataclasses.fields(method_cls.Options)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise LatteclipError(
            f"option(s) {', '.join(unknown)} do not apply to method {method_cls.name}"
            + (f" (its options: {', '.join(sorted(known))})" if known else " (it has no options)")
        )
    kinds = typing.get_type_hints(method_cls.Options)
    return method_cls.Options(
        **{k: coerce(kinds[k], v, f"--{k.replace('_', '-')} (method option {k})") for k, v in values.items()}
    )
