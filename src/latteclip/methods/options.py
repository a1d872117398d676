"""Every method's own options, declared once with `config.option` (help, kind, choices) like the run options.

This module imports no torch, so the command line builds its flags (and `--help`) from these dataclasses
directly; each method module names its class as `Options`. The values here are the defaults (the authors'
runs); `configs/methods/<method>.yaml` and `--config` files override them.
"""

from __future__ import annotations

from dataclasses import dataclass

from latteclip.config import option

TEXT_KINDS = ("class", "image", "group")  # LatteCLIP's texts of an image: its class text and its two descriptions


@dataclass
class NoOptions:
    """Methods without options of their own."""


@dataclass
class CoftOptions:
    phase1_fraction: float = option(
        0.25, help="share of each round in phase 1 (encoder frozen); the rest is phase 2 (encoder fine-tuned)"
    )
    clean_warmup_fraction: float = option(
        0.15, help="share of the run, at its start, in which every round label is kept (the prompts know nothing yet)"
    )
    prompt_init: str = option("", help="positive context words; '' = the first template's words before the class name")
    negative_prompt_init: str = option("", help='negative context words; "" = "not " + the positive context')
    adapter_reduction: int = option(4, help="adapter bottleneck width = feature dim / this")
    peft_lr_scale: float = option(
        100.0, help="prompts, adapter and class vectors learn at this multiple of the base learning rate"
    )
    positive_weight: float = option(1.0, help='"yes" on the pair of each kept label')
    negative_weight: float = option(1.0, help='"no" on the pair of a random class other than a kept label')
    noisy_weight: float = option(
        1.0, help='"no" on the pair of each rejected candidate label ("not class y" on the low-confidence samples)'
    )
    balance_weight: float = option(1.0, help="prior matching: KL(batch-mean prediction || uniform), per model; 0 = off")
    relabel: bool = option(
        True, help="candidates: the round label and both models' predictions; off = the round label only"
    )


@dataclass
class CoftPlusOptions(CoftOptions):
    rounds: int = option(
        2, help="equal rounds of (phase 1, phase 2); pseudo-labels refreshed collaboratively at each round start"
    )
    momentum_contrast: bool = option(
        True, help="the momentum encoder, its queue and the supervised momentum-contrastive term"
    )
    ema_momentum: float = option(0.999, help="momentum of the key encoder")
    queue_size: int = option(4096, help="keys kept for the momentum-contrastive loss")
    contrastive_temperature: float = option(0.07, help="temperature of the momentum-contrastive loss")
    contrastive_weight: float = option(1.0, help="weight of the momentum-contrastive loss in the total")
    llm_descriptions: bool = option(
        True, help="LLM class descriptions added to the class texts; off = CoFT's class texts"
    )
    class_descriptions: str = option(
        "",
        help="JSON {class name: [LLM texts]}; else the --store's LLM descriptions of each class name (describe --kinds "
        "classes), or its kind 'class' texts of the training images",
    )
    description_weight: float = option(1.0, help="class weights = normalize(t+_c + this * mean description feature)")


@dataclass
class FlypOptions:
    pseudo_labels: str = option(
        "zero-shot", help="zero-shot: c_zs fixed before training (the authors' runs); current: argmax of the live model"
    )


@dataclass
class PretrainOptions:
    attribute_captions: float = option(
        0.0, help="share of captions written from the class's nouns and attributes instead of a class template"
    )


@dataclass
class ReclipOptions:
    lp_neighbors: int = option(20, help="k of the k-nearest-neighbour graph")
    lp_alpha: float = option(0.99, help="propagation strength in (I - alpha S) F = Y")
    lp_solver: str = option("iterative", help="iterative (conjugate gradient, sparse) or closed_form (dense solve)")
    lp_iterations: int = option(20, help="conjugate-gradient steps of the iterative solver")
    projection_drop: int = option(1, help="leading principal directions of the class texts removed")
    projection_max_dim: int = option(0, help="keep at most this many text directions (0: all)")
    refresh_every: int = option(
        0, help="steps between two label propagations over the training split (0: once per epoch, the authors')"
    )
    vision_loss_over_batch: bool = option(
        True,
        help="ReCLIP-V's loss (the mean cross-entropy over the agreed samples) "
        "divided by the batch size, as in the authors' code; off: not divided",
    )
    lp_templates: str = option(
        "clip",
        help="clip: CLIP's template list of a paper dataset for the label propagation "
        "and the projection (the authors'); run: the run's templates (--prompt-set)",
    )


@dataclass
class ZeroShotOptions:
    ensemble: bool = option(False, help="average all the dataset's templates instead of the first")


@dataclass
class LatteCLIPOptions:
    texts: list[str] = option(factory=lambda: list(TEXT_KINDS), help="any non-empty subset of class,image,group")
    mixer: bool = option(True, help="Dynamic Feature Mixer; off = every text weighs 1")
    mixer_prototypes: str = option(
        "epoch",
        help="epoch: the mixer weighs texts against the prototypes as they were "
        "at the start of the epoch (the authors' snapshot); current: against "
        "the bank as it is at each step",
    )
    loss_zs: bool = option(True, help="L_con(u, t_zs)")
    loss_ft: bool = option(True, help="L_con(u, t_ft)")
    momentum: bool = option(
        True, help="off: the prototype is replaced by the normalised batch mean of the mixed texts (no alpha)"
    )
    alpha: float = option(0.99, help="Eq. (2); with mu = 0 also the momentum of the prototypes (the authors' rule)")
    mu: float = option(
        0.0, help="> 0: the paper's literal second momentum on top of Eq. (2), p <- normalize((1 - mu) t + mu p)"
    )
    described_by: str | None = option(
        None,
        help="read the description set whose texts are by this describer (its "
        "store name, e.g. clip-vocab:..., or one ending in +true-class-members for "
        "the analysis); default: the newest set of the training images, the one drawn "
        "with the run's seed first",
    )
    group_text: str = option(
        "random",
        help="random: each visit reads the group of a random image of its zero-shot "
        "class (the authors); own: its own group",
    )
    missing_descriptions: str = option("error", help='or "class": use the class text where a description is missing')
    fast_text: bool = option(
        True, help="encode each distinct text once, tokens cut to the longest (exact); off = reference cost"
    )
    gallery_size: int = option(12, help="training images shown with their texts and weights in the report")


# Which options each registered method takes (methods/__init__.REGISTRY names the method classes).
OPTIONS: dict[str, type] = {
    "zeroshot": ZeroShotOptions,
    "flyp_pl": FlypOptions,
    "oracle": NoOptions,
    "latteclip": LatteCLIPOptions,
    "reclip": ReclipOptions,
    "coft": CoftOptions,
    "coft_plus": CoftPlusOptions,
    "pretrain": PretrainOptions,
}
