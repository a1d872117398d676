"""The prompts sent to the LMM (method.md 1.2 and 2), kept as data so users can change them.

Layers, later wins: `prompts.json` (the wording of the authors' runs, with `{domain}`, `{label}` and
`{options}` placeholders; `classes`: the questions a text-only LLM is asked about each class name, one description
each, as CuPL asks several), the dataset's own prompts (its spec's `prompts`, e.g. EuroSAT's "satellite
image", Flowers naming the zero-shot class), the config's `describe.prompts`, then `--prompts FILE`
(or `--prompts paper`: the paper's printed wording, `prompts_paper.json`). Each template is checked
when loaded, so a typo in a placeholder fails before any request. A description prompt that
contains `{label}` names the image's zero-shot class.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from latteclip.errors import LatteclipError

# placeholders each prompt must contain, and those it may contain
REQUIRED = {
    "image": set(),
    "image_with_label": {"label"},
    "group": set(),
    "group_with_label": {"label"},
    "lmm_zeroshot": {"options"},
    "classes": {"label"},
}
ALLOWED = {
    "image": {"domain", "label"},
    "image_with_label": {"domain", "label"},
    "group": {"domain", "label"},
    "group_with_label": {"domain", "label"},
    "lmm_zeroshot": {"domain", "options"},
    "classes": {"domain", "label"},
}
NAMED_PROMPT_FILES = {"paper": "prompts_paper.json"}  # --prompts paper: the wording printed in the paper


@dataclass(frozen=True)
class Prompts:
    image: str
    image_with_label: str
    group: str
    group_with_label: str
    lmm_zeroshot: str
    classes: tuple[str, ...]  # one text-only question per description of a class name (kind `classes`)

    def template(self, kind: str, with_label: bool = False) -> str:
        """The `image` or `group` template; its `_with_label` variant when asked."""
        if kind not in ("image", "group"):
            raise ValueError(f"descriptions are of kind image or group, not {kind!r}")
        return getattr(self, f"{kind}_with_label" if with_label else kind)

    def names_label(self, kind: str, with_label: bool = False) -> bool:
        """Whether the prompt for `kind` names the image's zero-shot class (so it needs zero-shot labels)."""
        return "label" in placeholders(self.template(kind, with_label))

    def description(self, kind: str, domain: str, label: str | None = None, with_label: bool = False) -> str:
        """The prompt for an `image` or `group` description, with the zero-shot class where it names one."""
        template = self.template(kind, with_label)
        if label is None and "label" in placeholders(template):
            raise ValueError(f"the {kind} prompt {template!r} names the zero-shot class: pass its label")
        return template.format(domain=domain, label=label)

    def class_questions(self, classname: str, domain: str) -> list[str]:
        """The text-only questions about one class name, each answered by one description."""
        return [template.format(label=classname, domain=domain) for template in self.classes]

    def multiple_choice(self, classnames: list[str], domain: str) -> str:
        """The LMM zero-shot prompt with the class names as comma-separated options."""
        return self.lmm_zeroshot.format(domain=domain, options=", ".join(classnames))


def placeholders(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise LatteclipError(
            f"prompt {template!r} has unbalanced braces ({err}); write literal braces as {{{{ }}}}"
        ) from err


def _checked(name: str, template: Any, origin: str) -> Any:
    if name not in REQUIRED:
        raise LatteclipError(f"{origin}: unknown prompt '{name}' (prompts: {', '.join(REQUIRED)})")
    if name == "classes":  # a list of questions, each checked as a prompt
        if not isinstance(template, list) or not template:
            raise LatteclipError(f"{origin}: prompt 'classes' must be a non-empty list of questions with {{label}}")
        return tuple(_checked_text(name, text, origin) for text in template)
    return _checked_text(name, template, origin)


def _checked_text(name: str, template: Any, origin: str) -> str:
    if not isinstance(template, str) or not template.strip():
        raise LatteclipError(f"{origin}: prompt '{name}' must be a non-empty string")
    found = placeholders(template)
    unknown = found - ALLOWED[name]
    if unknown:
        raise LatteclipError(
            f"{origin}: prompt '{name}' uses {{{', '.join(sorted(unknown))}}}; it may use only "
            + ", ".join(f"{{{p}}}" for p in sorted(ALLOWED[name]))
        )
    absent = REQUIRED[name] - found
    if absent:
        raise LatteclipError(f"{origin}: prompt '{name}' must contain " + ", ".join(f"{{{p}}}" for p in sorted(absent)))
    return template


def read_prompt_file(path: str | Path) -> dict[str, Any]:
    if str(path) in NAMED_PROMPT_FILES:
        return json.loads(resources.files("latteclip.describe").joinpath(NAMED_PROMPT_FILES[str(path)]).read_text())
    file = Path(path)
    if not file.is_file():
        raise LatteclipError(f"prompts file {path} does not exist")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))  # YAML also reads JSON
    except yaml.YAMLError as err:
        raise LatteclipError(f"prompts file {path} is neither JSON nor YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise LatteclipError(f"prompts file {path} must map prompt names ({', '.join(REQUIRED)}) to templates")
    return data


def load_prompts(*overrides: str | Path | Mapping[str, Any] | None) -> Prompts:
    """The package prompts with each override (a file path or a mapping) applied in order."""
    defaults = json.loads(resources.files("latteclip.describe").joinpath("prompts.json").read_text())
    prompts = Prompts(**{name: _checked(name, text, "describe/prompts.json") for name, text in defaults.items()})
    for override in overrides:
        if override is None:
            continue
        if isinstance(override, Mapping):
            data, origin = dict(override), "prompts in the config"
        else:
            data, origin = read_prompt_file(override), f"prompts {override}"
        prompts = replace(prompts, **{name: _checked(name, text, origin) for name, text in data.items()})
    return prompts
