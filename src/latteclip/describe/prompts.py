"""The prompts sent to the LMM (method.md 1.2 and 2), kept as data so users can change them.

`prompts.json` holds the paper's wording with `{domain}`, `{label}` and `{options}` placeholders.
A user file (JSON or YAML) or the `describe.prompts` mapping of a config replaces any of them;
each template is checked when loaded, so a typo in a placeholder fails before any request.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from latteclip.errors import LatteclipError

# placeholders each prompt must contain, and those it may contain
REQUIRED = {
    "image": {"domain"},
    "image_with_label": {"label"},
    "group": {"domain"},
    "group_with_label": {"label"},
    "lmm_zeroshot": {"options"},
}
ALLOWED = {
    "image": {"domain"},
    "image_with_label": {"domain", "label"},
    "group": {"domain"},
    "group_with_label": {"domain", "label"},
    "lmm_zeroshot": {"domain", "options"},
}


@dataclass(frozen=True)
class Prompts:
    image: str
    image_with_label: str
    group: str
    group_with_label: str
    lmm_zeroshot: str

    def description(self, kind: str, domain: str, label: str | None = None) -> str:
        """The prompt for an `image` or `group` description; naming the zero-shot label when one is given."""
        if kind not in ("image", "group"):
            raise ValueError(f"descriptions are of kind image or group, not {kind!r}")
        if label is None:
            return getattr(self, kind).format(domain=domain)
        return getattr(self, f"{kind}_with_label").format(domain=domain, label=label)

    def multiple_choice(self, classnames: list[str], domain: str) -> str:
        """The LMM zero-shot prompt with the class names as comma-separated options."""
        return self.lmm_zeroshot.format(domain=domain, options=", ".join(classnames))


def placeholders(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise LatteclipError(f"prompt {template!r} has unbalanced braces ({err}); write literal braces as {{{{ }}}}") from err


def _checked(name: str, template: Any, origin: str) -> str:
    if name not in REQUIRED:
        raise LatteclipError(f"{origin}: unknown prompt '{name}' (prompts: {', '.join(REQUIRED)})")
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
            data, origin = read_prompt_file(override), f"prompts file {override}"
        prompts = replace(prompts, **{name: _checked(name, text, origin) for name, text in data.items()})
    return prompts
