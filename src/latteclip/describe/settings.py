"""Options of the description stage, merged from the config's `describe:` mapping and the command line,
and the one place that turns them into a describer."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latteclip.config import option
from latteclip.describe.answers import DEFAULT_CUTOFF
from latteclip.describe.groups import GROUP_DRAWS
from latteclip.errors import LatteclipError
from latteclip.values import coerce

if TYPE_CHECKING:  # importing torch and OpenCLIP here would slow every command's start
    import torch

    from latteclip.describe.backend import Describer
    from latteclip.models import LoadedModel

BACKENDS = ("openai", "transformers", "offline", "batch")  # batch: OpenAI Batch files (describe --batch-out/--batch-in)
DESCRIBABLE_KINDS = ("image", "group", "classes")  # classes: text only, descriptions of each class name
DEFAULT_KINDS = ("image", "group")
DEFAULT_STOP_AFTER_FAILURES = 20
ANSWER_FORMATS = ("text", "json-schema")  # LMM zero-shot: free text (the paper), or constrained to the class names


LMM, WHAT, ANSWERS = "LMM", "what to describe", "LMM zero-shot (zeroshot --lmm)"  # the help sections of the flags
BATCH = "OpenAI Batch files (describe --lmm batch)"


@dataclass(frozen=True)
class DescribeSettings:
    """How the description stage (and the LMM zero-shot baseline) runs: the `describe:` mapping of a config file
    and the flags of `describe`, `adapt` and `zeroshot --lmm`, declared once here."""

    lmm: str | None = option(
        None,
        choices=BACKENDS,
        group=LMM,
        help="openai: a chat-completions server; transformers: "
        "a model in this process; offline: a substitute that ranks a vocabulary's nouns and "
        "attribute phrases with a CLIP model (--describer-model; default the adapted model; no "
        "LMM); batch (describe): OpenAI Batch files, --batch-out then --batch-in",
    )
    lmm_url: list[str] = option(
        factory=list,
        kind="speed",
        group=LMM,
        help="base URL of an OpenAI-compatible server, e.g. http://host:8000/v1 (repeat to share the work)",
    )
    lmm_model: str | None = option(
        None,
        group=LMM,
        help="served model name (openai; default: asked from the server), or a local folder / hub id (transformers)",
    )
    lmm_timeout: float = option(
        120.0,
        kind="speed",
        group=LMM,
        help="seconds a request waits while its server answers "
        "nothing (a server that keeps answering others is waited for, with fewer requests in "
        "flight)",
    )
    lmm_retries: int = option(5, kind="speed", group=LMM, help="retries after 429/5xx/timeouts/bad answers")
    lmm_batch_size: int = option(8, kind="speed", group=LMM, help="images per forward pass in-process")
    lmm_ca_bundle: str | None = option(
        None,
        kind="speed",
        group=LMM,
        help="PEM file of the CA that signed the "
        "server's certificate (a gateway on an internal CA; default: the system's "
        "trust store)",
    )
    lmm_insecure: bool = option(
        False,
        kind="speed",
        group=LMM,
        help="do not check the server's TLS certificate (proxies come from HTTPS_PROXY, HTTP_PROXY, NO_PROXY)",
    )
    concurrency: int | None = option(
        None,
        kind="speed",
        group=LMM,
        help="requests in flight at most (default 64 for openai, lowered while the server is saturated; 1 in-process)",
    )
    stop_after_failures: int = option(
        DEFAULT_STOP_AFTER_FAILURES, kind="speed", group=LMM, help="stop the run after this many failed images in a row"
    )
    kinds: list[str] = option(
        factory=lambda: list(DEFAULT_KINDS),
        group=WHAT,
        help="what to describe: image,group (LatteCLIP's texts); classes: text only, each class name's descriptions "
        "(the prompts' `classes` questions, one answer each), which CoFT+ reads",
    )
    group_size: int = option(4, group=WHAT, help="images per group collage: 2, 4, 8, 16")
    group_draw: str = option(
        "class",
        choices=GROUP_DRAWS,
        group=WHAT,
        help="class (the authors' runs): each group is "
        "random images of one zero-shot class; anchor (the paper's text): an image and others of "
        "its zero-shot class",
    )
    with_label: bool = option(False, group=WHAT, help="name each image's zero-shot label in the prompt")
    true_class_members: int | None = option(
        None, group=WHAT, help="ANALYSIS ONLY, READS THE TRUE LABELS: groups with K images of the anchor's true class"
    )
    prompts: Any = option(None, flag=False, help="a prompts file, or a mapping of prompt name -> template")
    vocabulary: str | None = option(
        None, group=WHAT, help="phrase file of the offline describer (default: the bundled one for the dataset)"
    )
    describer_model: str | None = option(
        None,
        group=WHAT,
        help="offline: the OpenCLIP model that describes, e.g. ViT-L-14 (default: the adapted --model)",
    )
    describer_pretrained: str | None = option(
        None, group=WHAT, help="offline: the describer's weights, an OpenCLIP tag or a weights file (default: random)"
    )
    answer_cutoff: float = option(
        DEFAULT_CUTOFF, group=ANSWERS, help="with --lmm: least string similarity that maps an answer to a class"
    )
    lmm_answer_format: str = option(
        "text",
        choices=ANSWER_FORMATS,
        group=ANSWERS,
        help="with --lmm openai: text (free "
        "answers, the paper's baseline) or json-schema (the server may answer only a class "
        "name: OpenAI response_format, for vLLM, SGLang, Ollama)",
    )
    batch_shards: int = option(
        1,
        kind="speed",
        group=BATCH,
        help="with --batch-out: N request files of near-equal size, FILE-1-of-N.jsonl ... (one per node)",
    )

    def check(self) -> DescribeSettings:
        if self.lmm is not None and self.lmm not in BACKENDS:
            raise LatteclipError(f"--lmm {self.lmm} is not a backend: choose one of {', '.join(BACKENDS)}")
        unknown = [k for k in self.kinds if k not in DESCRIBABLE_KINDS]
        if not self.kinds or unknown:
            raise LatteclipError(
                f"--kinds must list some of {','.join(DESCRIBABLE_KINDS)} (got {','.join(self.kinds) or 'nothing'})"
            )
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
            raise LatteclipError(
                "--describer-pretrained needs --describer-model NAME (the OpenCLIP model the weights are for)"
            )
        if self.describer_model and self.lmm not in (None, "offline"):
            raise LatteclipError(
                f"--describer-model chooses the CLIP model of --lmm offline; --lmm {self.lmm} describes with "
                "--lmm-model"
            )
        if self.lmm_answer_format not in ANSWER_FORMATS:
            raise LatteclipError(
                f"--lmm-answer-format {self.lmm_answer_format} must be one of {', '.join(ANSWER_FORMATS)}"
            )
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
        raise LatteclipError(
            f"config: unknown describe option(s) {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})"
        )
    values = {**from_config, **{k: v for k, v in from_cli.items() if v is not None}}
    kinds = typing.get_type_hints(DescribeSettings)
    values = {
        k: coerce(
            kinds[k],
            v,
            f"--{k.replace('_', '-')}" if k in from_cli and from_cli[k] is not None else f"config: describe: {k}",
        )
        for k, v in values.items()
    }
    return DescribeSettings(**values).check()


def build_describer(
    settings: DescribeSettings, domain: str, loaded: LoadedModel | None, device: torch.device, dataset: str = ""
) -> Describer:
    """The describer the settings name; `loaded` is the adapted CLIP model (the offline substitute's default model).

    `dataset` picks the offline describer's bundled vocabulary.
    """
    if settings.lmm == "openai":
        from latteclip.describe.openai_http import OpenAIDescriber

        return OpenAIDescriber(
            settings.lmm_url,
            settings.lmm_model,
            settings.lmm_timeout,
            settings.lmm_retries,
            ca_bundle=settings.lmm_ca_bundle,
            insecure=settings.lmm_insecure,
        )
    if settings.lmm == "transformers":
        from latteclip.describe.hf_local import TransformersDescriber

        return TransformersDescriber(settings.lmm_model or "", device, settings.lmm_batch_size)
    if settings.lmm == "offline":
        from latteclip.describe.clip_vocab import ClipVocabularyDescriber

        if settings.describer_model:
            from latteclip.models import load_clip

            loaded = load_clip(settings.describer_model, settings.describer_pretrained, device)
        if loaded is None:
            raise LatteclipError(
                "the offline describer needs a CLIP model (--describer-model, or --model/--pretrained)"
            )
        return ClipVocabularyDescriber(loaded, domain, device, settings.vocabulary, settings.lmm_batch_size, dataset)
    if settings.lmm == "batch":
        raise LatteclipError(
            "--lmm batch writes and reads OpenAI Batch files: use it with describe --batch-out/--batch-in"
        )
    raise LatteclipError(f"choose a describer with --lmm ({', '.join(BACKENDS)})")
