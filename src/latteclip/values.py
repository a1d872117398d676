"""Option values read from YAML, JSON or the command line, checked against the type they must have.

PyYAML reads `lr: 1e-5` as a string and a user may write `batch_size: "8"`: such values are read
as the number they spell; anything else of the wrong type is refused with one line naming it.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from latteclip.errors import LatteclipError

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _kind_name(kind: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    if kind in names:
        return names[kind]
    if typing.get_origin(kind) in (list, tuple):
        return "a list"
    return str(kind)


def _scalar(kind: type, value: Any) -> Any:
    """`value` as bool, int, float or str, or ValueError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        number = float(value.strip()) if isinstance(value, str) else value
        if isinstance(number, float) and number.is_integer():
            return int(number)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            raise ValueError
        if math.isfinite(number):
            return number
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # `name: 2024` in YAML
            return str(value)
    raise ValueError


def coerce(kind: Any, value: Any, label: str) -> Any:
    """`value` as the type hint `kind` (int, float, bool, str, X | None, list[X], tuple[X, Y], dict)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    try:
        if origin in (list, tuple):
            items = [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(items) != len(args):
                    raise LatteclipError(f"{label} must be a list of {len(args)} values, not {value!r}")
                return tuple(coerce(a, v, label) for a, v in zip(args, items))
            item_kind = args[0] if args else Any
            converted = [v if item_kind is Any else coerce(item_kind, v, label) for v in items]
            return tuple(converted) if origin is tuple else converted
        if kind is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return value
        if kind in (bool, int, float, str):
            return _scalar(kind, value)
        return value
    except (ValueError, TypeError, AttributeError):
        raise LatteclipError(f"{label} must be {_kind_name(kind)}, not {value!r}") from None


def at_least(value: float | None, minimum: float, label: str, strictly: bool = False) -> None:
    """Refuse a number below `minimum` (or equal to it when `strictly`); None passes."""
    if value is None:
        return
    if value < minimum or (strictly and value == minimum):
        bound = f"greater than {minimum:g}" if strictly else f"at least {minimum:g}"
        raise LatteclipError(f"{label} must be {bound}, not {value!r}")
