"""Methods: one module each, registered here by name (a new method is one file and one line)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import io
import tokenize
import typing
from pathlib import Path
from typing import Any

from latteclip.errors import LatteclipError
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


def get_method(name: str) -> type:
    if name not in REGISTRY:
        raise LatteclipError(f"unknown method '{name}': choose one of {', '.join(sorted(REGISTRY))}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


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
    return method_cls.Options(**{k: coerce(kinds[k], v, f"--{k.replace('_', '-')} (method option {k})") for k, v in values.items()})


# --- the options a method declares, read from its source without importing it ---------------------------
# Building the command line must not import torch (every `--help` would take seconds), so the flags come
# from the Options dataclasses' source text: names, annotations, defaults and the comment on each line.
@dataclasses.dataclass(frozen=True)
class DeclaredOption:
    name: str
    annotation: str  # as written, e.g. "int", "list[str]", "str | None"
    default: Any
    description: str  # the comment on the field's line


def declared_options(method: str) -> list[DeclaredOption]:
    """The options of a registered method, in declaration order (inherited ones first)."""
    if method not in REGISTRY:
        raise LatteclipError(f"unknown method '{method}': choose one of {', '.join(sorted(REGISTRY))}")
    module, attr = REGISTRY[method].split(":")
    method_module, method_class = _resolve_class(module, attr)
    options_at = _options_class_of(method_module, method_class)
    return _fields_of(*options_at) if options_at else []


@functools.lru_cache(maxsize=None)
def _parsed(module: str) -> tuple[ast.Module, dict[int, str]]:
    """A module's syntax tree and the comment ending each line (by line number); each module is read once."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"method module {module} not found")
    source = Path(spec.origin).read_text(encoding="utf-8")
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    return ast.parse(source), comments


def _resolve_class(module: str, name: str) -> tuple[str, ast.ClassDef]:
    """(module, class definition) of `name` as seen from `module`, following `from X import name`."""
    tree, _ = _parsed(module)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and any((a.asname or a.name) == name for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            return _resolve_class(node.module, original)
    raise RuntimeError(f"class {name} not found in {module}")


def _options_class_of(module: str, cls: ast.ClassDef) -> tuple[str, ast.ClassDef] | None:
    """The class a method's `Options = X` names, looking through its bases."""
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "Options" for t in node.targets):
            return _resolve_class(module, node.value.id)  # type: ignore[attr-defined]
    for base in cls.bases:
        if isinstance(base, ast.Name):
            found = _options_class_of(*_resolve_class(module, base.id))
            if found:
                return found
    return None


def _fields_of(module: str, cls: ast.ClassDef) -> list[DeclaredOption]:
    tree, comments = _parsed(module)
    constants = {
        target.id: node.value
        for node in tree.body if isinstance(node, ast.Assign)
        for target in node.targets if isinstance(target, ast.Name)
    }
    inherited: list[DeclaredOption] = []
    for base in cls.bases:
        if isinstance(base, ast.Name):
            inherited += _fields_of(*_resolve_class(module, base.id))
    own = [
        DeclaredOption(node.target.id, ast.unparse(node.annotation), _literal(node.value, constants),
                       comments.get(node.end_lineno or node.lineno, ""))
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None
        and not ast.unparse(node.annotation).startswith("ClassVar")
    ]
    names = {o.name for o in own}
    return [o for o in inherited if o.name not in names] + own


def _literal(node: ast.expr, constants: dict[str, ast.expr]) -> Any:
    """The value of a default: a literal, a module constant, list(...)/tuple(...) of one, or field(default...=...)."""
    if isinstance(node, ast.Name) and node.id in constants:
        return _literal(constants[node.id], constants)
    if isinstance(node, ast.Lambda):
        return _literal(node.body, constants)
    if isinstance(node, ast.Name) and node.id in ("list", "dict"):  # field(default_factory=list)
        return [] if node.id == "list" else {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id in ("list", "tuple") and len(node.args) == 1:
            return list(_literal(node.args[0], constants))
        if node.func.id == "field":
            given = {k.arg: k.value for k in node.keywords}
            return _literal(given.get("default", given.get("default_factory")), constants)
    return ast.literal_eval(node)
