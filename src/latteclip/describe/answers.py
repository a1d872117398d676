"""Mapping an LMM's free-text answer to a class for the LMM zero-shot baseline (method.md 2).

In order: the exact class name; the same after lower-casing and trimming spaces, quotes and
final punctuation; else the class name closest by string similarity, when it reaches `cutoff`.
Anything else is unmapped, and an unmapped answer counts as wrong.

Similarity is difflib's ratio between the trimmed lower-case strings, taken against the whole
class name and against each of its " or " alternatives (CLIP's names read "highway or road",
"lake or sea"), so that "highway" or "sea" map where they obviously belong while answers that
name no class ("I cannot tell") stay below the cutoff instead of landing on a random class.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_CUTOFF = 0.5
HOW = ("exact", "case_insensitive", "similar", "unmapped")


@dataclass(frozen=True)
class MappedAnswer:
    label: int | None
    how: str  # one of HOW
    similarity: float = 1.0


def normalise(text: str) -> str:
    return " ".join(text.strip().strip("\"'`.!").lower().split())


def similarity(answer: str, classname: str) -> float:
    """Best difflib ratio of a normalised answer against a normalised class name or one of its alternatives."""
    return max(difflib.SequenceMatcher(None, answer, part).ratio() for part in [classname, *classname.split(" or ")])


def map_answer(answer: str, classnames: Sequence[str], cutoff: float = DEFAULT_CUTOFF) -> MappedAnswer:
    text = answer.strip()
    if text in classnames:
        return MappedAnswer(list(classnames).index(text), "exact")
    plain = normalise(text)
    names = [normalise(c) for c in classnames]
    if plain in names:
        return MappedAnswer(names.index(plain), "case_insensitive")
    if not plain:
        return MappedAnswer(None, "unmapped", 0.0)
    scores = [similarity(plain, name) for name in names]
    best = max(range(len(names)), key=lambda i: (scores[i], -i))
    if scores[best] < cutoff:
        return MappedAnswer(None, "unmapped", scores[best])
    return MappedAnswer(best, "similar", scores[best])


def class_choice_format(classnames: Sequence[str]) -> dict:
    """The OpenAI `response_format` that lets the model answer only one of the class names (a JSON string):
    `--lmm-answer-format json-schema`, for servers with constrained decoding (vLLM, SGLang, Ollama)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "class_name", "schema": {"type": "string", "enum": list(classnames)}},
    }


def constrained_text(answer: str) -> str:
    """The class name inside a constrained answer ("\"Forest\"" -> "Forest"); the answer itself when it is not a JSON
    string."""
    try:
        value = json.loads(answer)
    except ValueError:
        return answer
    return value if isinstance(value, str) else answer


def mapping_counts(mapped: Sequence[MappedAnswer]) -> dict[str, float]:
    """How many answers each rule mapped, and the share left unmapped (the number the baseline reports)."""
    counts = Counter(m.how for m in mapped)
    out: dict[str, float] = {how: counts.get(how, 0) for how in HOW}
    out["unmapped_share"] = counts.get("unmapped", 0) / len(mapped) if mapped else 0.0
    return out
