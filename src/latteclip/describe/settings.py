"""Options of the description stage, merged from the config's `describe:` mapping and the command line,
and the one place that turns them into a describer."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from latteclip.describe.answers import DEFAULT_CUTOFF
from latteclip.describe.groups import GROUP_DRAWS
from latteclip.errors import LatteclipError
from latteclip.values import coerce

if TYPE_CHECKING:  # importing torch and OpenCLIP here would slow every command's start
    import torch

    from latteclip.describe.backend import Describer
    from latteclip.models import LoadedModel

BACKENDS = ("openai", "transformers", "offline", "batch")  # batch: OpenAI Batch files (describe --batch-out/--batch-in)
DESCRIBABLE_KINDS = ("image", "group")
DEFAULT_STOP_AFTER_FAILURES = 20
ANSWER_FORMATS = ("text", "json-schema")  # LMM zero-shot: free text (the paper), or constrained to the class names


@dataclass
class DescribeSettings:
    lmm: str | None = None  # openai, transformers or offline (the CLIP-vocabulary substitute)
    lmm_url: list[str] = field(default_factory=list)
    lmm_model: str | None = None  # openai: asked from the server when not given
    lmm_timeout: float = 120.0  # seconds per HTTP request
    lmm_retries: int = 5  # further tries of a request after a 429, 5xx, timeout or bad answer
    lmm_batch_size: int = 8  # requests per forward pass of an in-process model
    lmm_ca_bundle: str | None = None  # openai: PEM file of the CA of the server's certificate (instead of the system's)
    lmm_insecure: bool = False  # openai: do not check the server's TLS certificate
    concurrency: int | None = None  # requests in flight (default: 64 for openai, 1 in-process)
    kinds: list[str] = field(default_factory=lambda: list(DESCRIBABLE_KINDS))
    group_size: int = 4
    group_draw: str = "class"  # class: random images of the anchor's zero-shot class (the authors' runs); anchor: it and others
    with_label: bool = False  # the prompt variant that names the zero-shot label
    true_class_members: int | None = None  # ANALYSIS ONLY: groups with this many images of the TRUE class
    prompts: Any = None  # a prompts file, or a mapping of prompt name -> template
    vocabulary: str | None = None  # the offline describer's phrase file (default: the bundled one for the dataset)
    describer_model: str | None = None  # offline: the OpenCLIP model that describes (default: the adapted model)
    describer_pretrained: str | None = None  # its weights: an OpenCLIP tag or a file (default: random weights)
    stop_after_failures: int = DEFAULT_STOP_AFTER_FAILURES
    answer_cutoff: float = DEFAULT_CUTOFF  # LMM zero-shot: least similarity that maps an answer to a class
    lmm_answer_format: str = "text"  # LMM zero-shot: text, or json-schema (response_format enum of the class names)
    batch_shards: int = 1  # --lmm batch: request files --batch-out writes, dealt line by line (requests-K-of-N.jsonl)

    def check(self) -> "DescribeSettings":
        if self.lmm is not None and self.lmm not in BACKENDS:
            raise LatteclipError(f"--lmm {self.lmm} is not a backend: choose one of {', '.join(BACKENDS)}")
        unknown = [k for k in self.kinds if k not in DESCRIBABLE_KINDS]
        if not self.kinds or unknown:
            raise LatteclipError(f"--kinds must list some of {','.join(DESCRIBABLE_KINDS)} (got {','.join(self.kinds) or 'nothing'})")
        if self.group_size < 2:
            raise LatteclipError(f"--group-size {self.group_size} must be at least 2 (the paper uses 2, 4, 8, 16)")
        if self.group_draw not in GROUP_DRAWS:
            raise LatteclipError(f"--group-draw {self.group_draw} must be one of {', '.join(GROUP_DRAWS)}")
        if self.true_class_members is not None and not 1 <= self.true_class_members <= self.group_size:
            raise LatteclipError(f"--true-class-members must be between 1 and the group size {self.group_size}")
        for name in ("lmm_timeout", "lmm_batch_size", "stop_after_failures", "batch_shards"):
            if getattr(self, name) <= 0:
                raise LatteclipError(f"--{name.replace('_', '-')} must be positive")
        if self.concurrency is not None and self.concurrency < 1:
            raise LatteclipError("--concurrency must be at least 1")
        if self.describer_pretrained and not self.describer_model:
            raise LatteclipError("--describer-pretrained needs --describer-model NAME (the OpenCLIP model the weights are for)")
        if self.describer_model and self.lmm not in (None, "offline"):
            raise LatteclipError(f"--describer-model chooses the CLIP model of --lmm offline; --lmm {self.lmm} describes with --lmm-model")
        if self.lmm_answer_format not in ANSWER_FORMATS:
            raise LatteclipError(f"--lmm-answer-format {self.lmm_answer_format} must be one of {', '.join(ANSWER_FORMATS)}")
        if self.lmm_retries < 0:
            raise LatteclipError("--lmm-retries cannot be negative")
        if self.lmm_ca_bundle and self.lmm_insecure:
            raise LatteclipError("--lmm-ca-bundle checks the server's certificate, --lmm-insecure skips it: pass one")
        if self.lmm_ca_bundle and not Path(self.lmm_ca_bundle).is_file():
            raise LatteclipError(f"--lmm-ca-bundle {self.lmm_ca_bundle} is not a file: give the PEM file of the CA")
        return self


FIELDS = {f.name for f in dataclasses.fields(DescribeSettings)}


def resolve_settings(from_config: Mapping[str, Any], from_cli: Mapping[str, Any]) -> DescribeSettings:
    """Defaults, then the config's `describe:` mapping, then the command line (None means not given)."""
    unknown = sorted(set(from_config) - FIELDS)
    if unknown:
        raise LatteclipError(f"config: unknown describe option(s) {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})")
    values = {**from_config, **{k: v for k, v in from_cli.items() if v is not None}}
    kinds = typing.get_type_hints(DescribeSettings)
    values = {k: coerce(kinds[k], v, f"--{k.replace('_', '-')}" if k in from_cli and from_cli[k] is not None else f"config: describe: {k}")
              for k, v in values.items()}
    return DescribeSettings(**values).check()


def build_describer(
    settings: DescribeSettings, domain: str, loaded: LoadedModel | None, device: torch.device, dataset: str = ""
) -> Describer:
    """The describer the settings name; `loaded` is the adapted CLIP model (the offline substitute's default model).

    `dataset` picks the offline describer's bundled vocabulary.
    """
    if settings.lmm == "openai":
        from latteclip.describe.openai_http import OpenAIDescriber

        return OpenAIDescriber(settings.lmm_url, settings.lmm_model, settings.lmm_timeout, settings.lmm_retries,
                               ca_bundle=settings.lmm_ca_bundle, insecure=settings.lmm_insecure)
    if settings.lmm == "transformers":
        from latteclip.describe.hf_local import TransformersDescriber

        return TransformersDescriber(settings.lmm_model or "", device, settings.lmm_batch_size)
    if settings.lmm == "offline":
        from latteclip.describe.clip_vocab import ClipVocabularyDescriber

        if settings.describer_model:
            from latteclip.models import load_clip

            loaded = load_clip(settings.describer_model, settings.describer_pretrained, device)
        if loaded is None:
            raise LatteclipError("the offline describer needs a CLIP model (--describer-model, or --model/--pretrained)")
        return ClipVocabularyDescriber(loaded, domain, device, settings.vocabulary, settings.lmm_batch_size, dataset)
    if settings.lmm == "batch":
        raise LatteclipError("--lmm batch writes and reads OpenAI Batch files: use it with describe --batch-out/--batch-in")
    raise LatteclipError(f"choose a describer with --lmm ({', '.join(BACKENDS)})")
