"""CoFT and CoFT+ (arXiv 2602.04337; method.md section 3), in the project's reading of the abstract.

docs/methods.md reads the abstract sentence by sentence and lists the project's own choices. In short:
- Two models of different modalities collaborate. The text-side model T learns positive and
  negative prompts (CoOp context vectors on the frozen text tower) over the frozen pre-trained
  image encoder's features; the vision-side model V is the image encoder, then a residual
  adapter, then its own pair of class vectors (started at T's initial prompt features).
- Each model has its own sample-dependent clean probability of a label y for an image:
  p = softmax(s * [cos(x, pos_y), cos(x, neg_y)])[0], with x and (pos, neg) its own. For each
  training image the candidates are the round's pseudo-label and each model's prediction; the
  two models' clean log-odds are added (two independent judges of one yes/no event), the
  candidate with the highest sum is trained on when that sum is positive (joint p > 1/2) and
  every candidate with a negative sum gets the negative prompt's "not y" term. No threshold is set.
- Phases are fractions of each round: phase 1 trains T's prompts and V's adapter and class
  vectors (encoder frozen), phase 2 also fully fine-tunes V's image encoder. Predictions are V's.
- Against collapse: class-balanced cross-entropy and a prior-matching term on each model.
- CoFT+: rounds restart from pseudo-labels refreshed by the same collaborative choice over the
  whole training split; a momentum encoder with a queue for a supervised momentum-contrastive
  loss; LLM class descriptions added to the class texts. Both can be switched off.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latteclip import distributed
from latteclip.errors import LatteclipError
from latteclip.methods.base import Method, StepResult, TrainContext
from latteclip.methods.options import CoftOptions, CoftPlusOptions
from latteclip.models import encode_texts
from latteclip.models.adapter import FeatureAdapter
from latteclip.models.prompt_learner import PromptLearner, split_template
from latteclip.models.prototypes import full_precision

YES, NO = 0, 1  # the two outcomes of a dual-prompt pair


# --- the closed-form pieces ------------------------------------------------------------------------
def yes_no_logits(
    image_features: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    labels: torch.Tensor,
    scale: torch.Tensor | float,
) -> torch.Tensor:
    """[B, 2] logits s * [cos(v, t+_y), cos(v, t-_y)] of each image v against its class y's prompt pair."""
    v = F.normalize(image_features, dim=-1)
    pos = (v * F.normalize(positive[labels], dim=-1)).sum(dim=-1)
    neg = (v * F.normalize(negative[labels], dim=-1)).sum(dim=-1)
    return scale * torch.stack([pos, neg], dim=-1)


def clean_probability(
    image_features: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    labels: torch.Tensor,
    scale: torch.Tensor | float,
) -> torch.Tensor:
    """p_clean = softmax(s * [cos(v, t+_y), cos(v, t-_y)])[0]: the label y is judged clean when above 0.5."""
    return yes_no_logits(image_features, positive, negative, labels, scale).softmax(dim=-1)[:, YES]


def clean_log_odds(
    image_features: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor | float,
) -> torch.Tensor:
    """[B, K] log(p_clean / (1 - p_clean)) = s * (cos(v, t+_c) - cos(v, t-_c)) of each image for each of its K candidate
    labels."""
    b, k = candidates.shape
    logits = yes_no_logits(
        image_features.repeat_interleave(k, dim=0), positive, negative, candidates.reshape(-1), scale
    )
    return (logits[:, YES] - logits[:, NO]).reshape(b, k)


def first_occurrences(candidates: torch.Tensor) -> torch.Tensor:
    """[B, K] True where a candidate label is not a repeat of an earlier one in its row."""
    repeats = (candidates.unsqueeze(2) == candidates.unsqueeze(1)).tril(diagonal=-1).any(dim=2)
    return ~repeats


def collaborate(
    candidates: torch.Tensor, text_odds: torch.Tensor, vision_odds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two models' joint verdict on each image's candidate labels: (label, kept, rejected).

    The clean log-odds of the two models add (independent judges of the same yes/no event, even
    prior): joint p_clean > 1/2 exactly when the sum is positive. The label is the candidate with
    the highest sum, kept for the cross-entropy when that sum is positive; `rejected` [B, K] marks
    each distinct candidate whose sum is negative, for the "not y" term. A label one model gets
    wrong is thus replaced by the other's when the wrong model doubts its own label less than the
    right model doubts it.
    """
    joint = text_odds + vision_odds
    best = joint.argmax(dim=1)
    label = candidates.gather(1, best.unsqueeze(1)).squeeze(1)
    kept = joint.gather(1, best.unsqueeze(1)).squeeze(1) > 0
    return label, kept, (joint < 0) & first_occurrences(candidates)


def class_balanced_mean(losses: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample losses averaged within each label present, then over those labels: a class gains nothing by being
    frequent."""
    if labels.numel() == 0:
        return losses.sum() * 0.0
    counts = torch.bincount(labels, minlength=num_classes).to(losses.dtype)
    return (losses / counts[labels]).sum() / int((counts > 0).sum())


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, class-balanced (`class_balanced_mean`)."""
    return (
        class_balanced_mean(F.cross_entropy(logits, labels, reduction="none"), labels, logits.shape[1])
        if labels.numel()
        else 0.0 * logits.sum()
    )


def prior_matching(logits: torch.Tensor) -> torch.Tensor:
    """KL(mean prediction of the batch || uniform) = sum_c pbar_c log(C pbar_c): zero when the batch spreads evenly over
    the classes."""
    mean = logits.softmax(dim=1).mean(dim=0)
    return (mean * (mean.clamp_min(1e-12) * mean.shape[0]).log()).sum()


def yes_no_loss(
    features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, labels: torch.Tensor, answer: int, scale
) -> torch.Tensor:
    """Cross-entropy of the pairs of `labels` towards `answer` (YES or NO), class-balanced over `labels`; zero without
    samples."""
    if labels.numel() == 0:
        return 0.0 * features.sum()
    logits = yes_no_logits(features, positive, negative, labels, scale)
    return class_balanced_mean(
        F.cross_entropy(logits, torch.full_like(labels, answer), reduction="none"), labels, positive.shape[0]
    )


def random_other_classes(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """One class per sample drawn uniformly among the classes other than its label."""
    offsets = torch.randint(1, num_classes, (labels.shape[0],), generator=generator).to(labels.device)
    return (labels + offsets) % num_classes


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_target <- m * theta_target + (1 - m) * theta_online; buffers (e.g. norm statistics) are copied."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach().to(t.dtype), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def momentum_contrastive_loss(
    queries: torch.Tensor, query_labels: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Supervised contrast of each query against momentum keys: the keys sharing its label are its positives.

    -mean over positives of log softmax_k(q . k / T), averaged over the queries; queries and keys
    are L2-normalised, the query's own key (same image, momentum encoder) is among its positives.
    """
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).t() / temperature
    positives = (query_labels.unsqueeze(1) == key_labels.unsqueeze(0)).float()
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    return (-(log_prob * positives).sum(dim=1) / positives.sum(dim=1).clamp_min(1.0)).mean()


def load_class_descriptions(path: str, classnames: list[str], class_keys: list[str]) -> dict[int, list[str]]:
    """{class index: texts} from a JSON file {class name or folder name: [texts]}."""
    file = Path(path)
    if not file.is_file():
        raise LatteclipError(f"class descriptions file {path} does not exist")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise LatteclipError(f"class descriptions file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(t, str) for t in v) for v in data.values()
    ):
        raise LatteclipError(
            f'class descriptions file {path} must map class names to lists of texts: {{"forest": ["...", ...]}}'
        )
    index = {name: c for c, name in enumerate(classnames)} | {key: c for c, key in enumerate(class_keys)}
    unknown = sorted(set(data) - set(index))
    if unknown:
        raise LatteclipError(
            f"class descriptions file {path} names classes the dataset does not have: {', '.join(unknown[:5])}"
        )
    found: dict[int, list[str]] = {}
    for name, texts in data.items():
        found.setdefault(index[name], []).extend(t for t in texts if t.strip())
    return {c: list(dict.fromkeys(texts)) for c, texts in found.items() if texts}


def phase_schedule(step: int, total_steps: int, rounds: int, phase1_fraction: float) -> tuple[int, int]:
    """(round, phase) of a step: `rounds` equal rounds of the run, phase 1 for the first `phase1_fraction` of each."""
    round_index = min(
        rounds - 1, ((step + 1) * rounds - 1) // total_steps
    )  # the last round whose start is not after the step
    start = round_index * total_steps // rounds
    length = (round_index + 1) * total_steps // rounds - start
    return round_index, 1 if step - start < round(phase1_fraction * length) else 2


# --- the method ----------------------------------------------------------------------------------------
class Coft(Method):
    name = "coft"
    exportable_to_open_clip = False  # the feature adapter sits after the image tower
    Options = CoftOptions

    def __init__(self, loaded, info, options: CoftOptions, device: torch.device):
        super().__init__(loaded, info, options, device)
        if info.num_classes < 2:
            raise LatteclipError(
                "CoFT needs at least two classes (the negative prompt pushes away a class other than the label)"
            )
        for name in ("phase1_fraction", "clean_warmup_fraction"):
            if not 0.0 <= getattr(options, name) < 1.0:
                raise LatteclipError(
                    f"--{name.replace('_', '-')} {getattr(options, name)} must lie in [0, 1): it is a share of the "
                    "run's steps"
                )
        prefix, suffix = split_template(info.templates[0])
        positive_init = options.prompt_init or prefix or "a photo of a"
        negative_init = options.negative_prompt_init or f"not {positive_init}"
        # the text-side model T: learnable positive and negative prompts
        self.positive = PromptLearner(self.model, loaded.tokenizer, info.classnames, positive_init, suffix).to(device)
        self.negative = PromptLearner(self.model, loaded.tokenizer, info.classnames, negative_init, suffix).to(device)
        with torch.no_grad():
            positive, negative = self.prompt_features()
        # the vision-side model V: the image encoder, the adapter and its own pair of class vectors
        self.adapter = FeatureAdapter(positive.shape[-1], options.adapter_reduction).to(device)
        self.head = nn.ParameterDict(
            {"positive": nn.Parameter(positive.clone()), "negative": nn.Parameter(negative.clone())}
        )
        self.descriptions: torch.Tensor | None = None  # [C, d] mean LLM-description feature per class (CoFT+)
        self.pseudo_labels: torch.Tensor | None = None  # the round's labels of every training image
        self.labels_round = -1
        self.frozen: torch.Tensor | None = (
            None  # [N, d] the pre-trained encoder's features of the training images: T's view
        )

    # --- schedule --------------------------------------------------------------------------------------
    def rounds(self) -> int:
        return 1

    def schedule(self, step: int) -> tuple[int, int]:
        return phase_schedule(step, self.ctx.total_steps, self.rounds(), self.options.phase1_fraction)

    def warming_up(self, step: int) -> bool:
        return step < round(self.options.clean_warmup_fraction * self.ctx.total_steps)

    # --- models --------------------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """norm(f(x)): the encoder's features before the adapter."""
        return F.normalize(self.model.encode_image(images), dim=-1)

    def adapted(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.adapter(features), dim=-1)

    def prompt_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """T's (t+, t-) [C, d] each, normalised; gradients reach the context vectors."""
        return self.positive.features(self.model), self.negative.features(self.model)

    def vision_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """V's (positive, negative) class vectors [C, d], normalised."""
        return F.normalize(self.head["positive"], dim=-1), F.normalize(self.head["negative"], dim=-1)

    def class_weights(self, positive: torch.Tensor) -> torch.Tensor:
        """T's classifier: the positive prompts, plus the class descriptions when there are any (CoFT+)."""
        if self.descriptions is None:
            return positive
        return F.normalize(positive + self.options.description_weight * self.descriptions, dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapted(self.image_features(images))

    def classifier(self) -> torch.Tensor:
        """Predictions are V's: the adapted features against its positive class vectors."""
        with torch.no_grad():
            return self.vision_pair()[0]

    # --- training: setup ------------------------------------------------------------------------------
    def setup_training(self, ctx: TrainContext) -> None:
        super().setup_training(ctx)
        if ctx.total_steps < self.rounds():
            raise LatteclipError(
                f"CoFT+ runs {self.rounds()} rounds but the run has {ctx.total_steps} steps; pass --rounds "
                f"{ctx.total_steps} or more steps"
            )
        self.eval_train_set = ctx.train_set.with_transform(ctx.eval_transform)
        self.model.requires_grad_(False)
        self.model.visual.requires_grad_(True)
        # the engine calls this before a resumed run loads its weights: these are the pre-trained encoder's features
        self.frozen, self.readable = self.training_features("frozen encoder features")

    def training_features(self, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        """norm(f(x)) of every training image (evaluation transform) with the encoder as it is now."""
        was_training = self.model.training
        self.model.eval()
        features, valid = self.ctx.extract_features(self.image_features, self.eval_train_set, desc=desc)
        self.model.train(was_training)
        return features, valid

    def parameters(self) -> list[nn.Parameter | dict]:
        peft = [self.positive.context, self.negative.context, *self.adapter.parameters(), *self.head.values()]
        return [*self.model.visual.parameters(), {"params": peft, "lr_scale": self.options.peft_lr_scale}]

    @torch.no_grad()
    def start_round(self, round_index: int, step: int) -> None:
        """The round's pseudo-labels: zero-shot at round 0; later, both models' collaborative choice over the training
        split."""
        frozen = self.frozen.to(self.device)
        if round_index == 0:
            with full_precision(frozen):  # fp32 like the cached zero-shot labels, whatever autocast the step runs under
                labels = (frozen @ self.class_weights(self.zero_shot_classifier()).t()).argmax(dim=1)
        else:
            current, _ = self.training_features(f"round {round_index} labels")
            labels = self.choose(
                self.pseudo_labels.clamp_min(0).to(self.device), frozen, self.adapted(current.to(self.device))
            )[0]
        labels = labels.cpu()
        labels[~self.readable] = -1
        valid = self.readable
        changed = (labels != self.pseudo_labels)[valid].float().mean().item() if self.pseudo_labels is not None else 1.0
        counts = torch.bincount(labels[valid], minlength=self.info.num_classes)
        self.pseudo_labels, self.labels_round = labels, round_index
        self.ctx.log(
            {
                "step": step + 1,
                "coft/round": round_index,
                "coft/labels_changed": changed,
                "coft/labels_top_class_share": (counts.max() / counts.sum().clamp_min(1)).item(),
            }
        )

    def choose(
        self, round_labels: torch.Tensor, frozen: torch.Tensor, vision: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The collaboration on images seen by T (`frozen`) and V (`vision`).

        Returns (label, kept, rejected, candidates, T and V agree).

        In fp32 whatever autocast the step runs under: bf16 cosines move in steps of about 0.002, so
        near-ties would flip and a GPU run would label differently from a CPU run.
        """
        with full_precision(frozen):
            frozen, vision = frozen.float(), vision.float()
            scale = self.logit_scale()
            positive, negative = (t.detach().float() for t in self.prompt_features())
            vision_positive, vision_negative = (t.detach().float() for t in self.vision_pair())
            text_prediction = (frozen @ self.class_weights(positive).t()).argmax(dim=1)
            vision_prediction = (vision @ vision_positive.t()).argmax(dim=1)
            candidates = torch.stack([round_labels, text_prediction, vision_prediction], dim=1)
            if not self.options.relabel:  # the models only judge the round's label
                candidates = candidates[:, :1].expand(-1, 3)
            text_odds = clean_log_odds(frozen, positive, negative, candidates, scale)
            vision_odds = clean_log_odds(vision, vision_positive, vision_negative, candidates, scale)
            return (*collaborate(candidates, text_odds, vision_odds), candidates, text_prediction == vision_prediction)

    # --- training: one step -------------------------------------------------------------------------------
    def training_step(self, batch: dict, step: int) -> StepResult:
        round_index, phase = self.schedule(step)
        if self.labels_round != round_index:
            self.start_round(round_index, step)
        index = batch["index"].cpu()
        round_labels = self.pseudo_labels[index].clamp_min(0).to(self.device)
        if phase == 1:  # parameter-efficient: the encoder does not move
            with torch.no_grad():
                features = self.image_features(batch["image"])
        else:
            features = self.image_features(batch["image"])
        frozen = self.frozen[index].to(self.device)
        vision = self.adapted(features)
        with torch.no_grad():
            labels, kept, rejected, candidates, agree = self.choose(round_labels, frozen, vision.detach())
        if self.warming_up(step):
            labels, kept, rejected = round_labels, torch.ones_like(kept), torch.zeros_like(rejected)

        generator = torch.Generator().manual_seed(hash((self.ctx.seed, step)) & 0x7FFFFFFF)
        others = random_other_classes(labels, self.info.num_classes, generator)
        positive, negative = self.prompt_features()
        text = self.model_loss(
            frozen, self.class_weights(positive), positive, negative, labels, kept, rejected, candidates, others
        )
        vision_positive, vision_negative = self.vision_pair()
        loss_vision = self.model_loss(
            vision, vision_positive, vision_positive, vision_negative, labels, kept, rejected, candidates, others
        )
        loss = text["loss"] + loss_vision["loss"]
        metrics: dict[str, float] = {
            "phase": float(phase),
            "round": float(round_index),
            "kept": kept.float().mean().item(),
        }
        metrics.update({f"text/{k}": v.item() for k, v in text.items()})
        metrics.update({f"vision/{k}": v.item() for k, v in loss_vision.items()})
        metrics["coft/agreement"] = agree.float().mean().item()  # label-free: T's prediction against V's
        metrics["coft/rejected"] = rejected.float().sum(dim=1).gt(0).float().mean().item()
        loss, state = self.extra_loss(batch, vision, kept, labels, loss, metrics)
        metrics["loss"] = loss.item()
        return StepResult(loss, metrics, pseudo_labels=labels, kept=kept, state=state)

    def model_loss(
        self,
        features: torch.Tensor,
        weights: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor,
        labels: torch.Tensor,
        kept: torch.Tensor,
        rejected: torch.Tensor,
        candidates: torch.Tensor,
        others: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """One model's terms: balanced cross-entropy and "yes" on kept labels, "no" on a random other class of
        each kept sample and on every rejected candidate, and prior matching on the whole batch."""
        opts = self.options
        scale = self.logit_scale()
        logits = scale * features @ weights.t()
        terms = {
            "ce": balanced_cross_entropy(logits[kept], labels[kept]),
            "yes": yes_no_loss(features[kept], positive, negative, labels[kept], YES, scale),
            "no": yes_no_loss(features[kept], positive, negative, others[kept], NO, scale),
            "not": yes_no_loss(
                features.repeat_interleave(candidates.shape[1], dim=0)[rejected.reshape(-1)],
                positive,
                negative,
                candidates.reshape(-1)[rejected.reshape(-1)],
                NO,
                scale,
            ),
            "prior": prior_matching(logits),
        }
        terms["loss"] = (
            terms["ce"]
            + opts.positive_weight * terms["yes"]
            + opts.negative_weight * terms["no"]
            + opts.noisy_weight * terms["not"]
            + opts.balance_weight * terms["prior"]
        )
        return terms

    def extra_loss(
        self,
        batch: dict,
        queries: torch.Tensor,
        keep: torch.Tensor,
        train_labels: torch.Tensor,
        loss: torch.Tensor,
        metrics: dict[str, float],
    ) -> tuple[torch.Tensor, dict]:
        """Terms CoFT+ adds to the loss (none for CoFT), and what `after_optimizer_step` needs."""
        return loss, {}

    # --- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "positive": self.positive.state_dict(),
            "negative": self.negative.state_dict(),
            "adapter": self.adapter.state_dict(),
            "head": self.head.state_dict(),
            "descriptions": None if self.descriptions is None else self.descriptions.cpu(),
            "pseudo_labels": self.pseudo_labels,
            "labels_round": self.labels_round,
        }

    def load_state_dict(self, state: dict) -> None:
        self.positive.load_state_dict(state["positive"])
        self.negative.load_state_dict(state["negative"])
        self.adapter.load_state_dict(state["adapter"])
        self.head.load_state_dict(state["head"])
        self.descriptions = None if state["descriptions"] is None else state["descriptions"].to(self.device)
        self.pseudo_labels = state["pseudo_labels"]
        self.labels_round = state["labels_round"]


class CoftPlus(Coft):
    name = "coft_plus"
    Options = CoftPlusOptions

    def __init__(self, loaded, info, options: CoftPlusOptions, device: torch.device):
        super().__init__(loaded, info, options, device)
        if options.rounds < 1:
            raise LatteclipError(f"--rounds {options.rounds} must be at least 1")
        if not 0.0 <= options.ema_momentum < 1.0 or options.queue_size < 1:
            raise LatteclipError("--ema-momentum must lie in [0, 1) and --queue-size be at least 1")
        self.key_encoder: nn.ModuleDict | None = None
        if options.momentum_contrast:
            self.online = nn.ModuleDict({"visual": self.model.visual, "adapter": self.adapter})
            self.key_encoder = copy.deepcopy(self.online).requires_grad_(False).eval()
            dim = self.adapter.up.out_features
            self.queue_keys = torch.zeros(options.queue_size, dim, device=device)
            self.queue_labels = torch.full((options.queue_size,), -1, dtype=torch.long, device=device)  # -1: empty slot
            self.queue_position = 0

    def rounds(self) -> int:
        return self.options.rounds

    def setup_training(self, ctx: TrainContext) -> None:
        super().setup_training(ctx)
        opts = self.options
        if not opts.llm_descriptions:
            return
        if opts.class_descriptions:
            texts = load_class_descriptions(opts.class_descriptions, self.info.classnames, self.info.class_keys)
        elif ctx.store:
            texts = self.store_descriptions(ctx.store)
        else:
            texts = {}
        if not texts:
            raise LatteclipError(
                "CoFT+ needs LLM class descriptions: ask an LLM for them with `latteclip describe --kinds classes "
                "--store STORE --lmm ...` and pass --store STORE, or pass --class-descriptions FILE.json "
                '({"class name": ["description", ...]}) (or --no-llm-descriptions to run without them)'
            )
        self.descriptions = self.description_features(texts)
        with torch.no_grad():  # V starts from the same classifier as T (a resumed run then loads its trained vectors)
            self.head["positive"].copy_(self.class_weights(self.head["positive"]))

    def store_descriptions(self, store_path: str) -> dict[int, list[str]]:
        """The LLM's descriptions of each class name in the description store (kind 'classes', the newest stage that
        asked them); a store without them: kind 'class' texts of the training images, grouped by the image's
        zero-shot class."""
        from latteclip.describe.jobs import image_hashes
        from latteclip.describe.store import DescriptionStore

        if not Path(store_path).is_file():
            raise LatteclipError(f"description store {store_path} does not exist")
        with DescriptionStore(store_path) as store:
            by_name = store.class_texts(self.info.name)
        if by_name:
            index = {name: c for c, name in enumerate(self.info.classnames)}
            return {index[n]: list(dict.fromkeys(texts)) for n, texts in by_name.items() if n in index}
        hashes = image_hashes(self.ctx.train_set)  # None for an unreadable image: it gets no text
        with DescriptionStore(store_path) as store:
            texts = store.get_texts(hashes, "class")
        if not any(texts):
            return {}
        with torch.no_grad():
            classes = (self.frozen.to(self.device) @ self.zero_shot_classifier().t()).argmax(dim=1).cpu()
        grouped: dict[int, list[str]] = {}
        for text, c, readable in zip(texts, classes.tolist(), self.readable.tolist()):
            if text and readable:
                grouped.setdefault(c, []).append(text)
        return {c: list(dict.fromkeys(t)) for c, t in grouped.items()}

    @torch.no_grad()
    def description_features(self, texts: dict[int, list[str]]) -> torch.Tensor:
        """[C, d]: the normalised mean feature of each class's descriptions (zeros for a class without any)."""
        features = torch.zeros(self.info.num_classes, self.adapter.up.out_features, device=self.device)
        for c, class_texts in texts.items():
            features[c] = F.normalize(
                encode_texts(self.model, self.tokens, class_texts, self.device).mean(dim=0), dim=-1
            )
        return features

    def extra_loss(
        self,
        batch: dict,
        queries: torch.Tensor,
        keep: torch.Tensor,
        train_labels: torch.Tensor,
        loss: torch.Tensor,
        metrics: dict[str, float],
    ) -> tuple[torch.Tensor, dict]:
        """The momentum-contrastive term: kept queries against this batch's keys and the queue."""
        if self.key_encoder is None:
            return loss, {}
        with torch.no_grad():
            keys = F.normalize(
                self.key_encoder["adapter"](F.normalize(self.key_encoder["visual"](batch["image"]), dim=-1)), dim=-1
            ).float()
        key_labels = torch.where(keep, train_labels, torch.full_like(train_labels, -1))
        filled = self.queue_labels >= 0
        all_keys = torch.cat([keys, self.queue_keys[filled]])
        all_labels = torch.cat([key_labels, self.queue_labels[filled]])
        if bool(keep.any()):
            loss_mc = momentum_contrastive_loss(
                queries[keep], train_labels[keep], all_keys, all_labels, self.options.contrastive_temperature
            )
        else:
            loss_mc = 0.0 * queries.sum()
        metrics["loss_contrastive"] = loss_mc.item()
        return loss + self.options.contrastive_weight * loss_mc, {"keys": keys[keep], "key_labels": train_labels[keep]}

    def after_optimizer_step(self, batch: dict, result: StepResult, step: int) -> None:
        if self.key_encoder is None:
            return
        ema_update(self.key_encoder, self.online, self.options.ema_momentum)
        # under torchrun every rank enqueues the keys of the whole global batch, so queues stay identical
        self.enqueue(distributed.gather(result.state["keys"]), distributed.gather(result.state["key_labels"]))

    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write keys over the oldest slots (a ring buffer); a batch larger than the queue keeps its last keys."""
        size = self.queue_keys.shape[0]
        keys, labels = keys[-size:], labels[-size:]
        slots = (self.queue_position + torch.arange(keys.shape[0], device=self.queue_keys.device)) % size
        self.queue_keys[slots] = keys.to(self.queue_keys.dtype)
        self.queue_labels[slots] = labels
        self.queue_position = int((self.queue_position + keys.shape[0]) % size)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.key_encoder is not None:
            state.update(
                key_encoder={k: v.detach().cpu() for k, v in self.key_encoder.state_dict().items()},
                queue_keys=self.queue_keys.cpu(),
                queue_labels=self.queue_labels.cpu(),
                queue_position=self.queue_position,
            )
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.key_encoder is not None:
            self.key_encoder.load_state_dict(state["key_encoder"])
            self.queue_keys = state["queue_keys"].to(self.device)
            self.queue_labels = state["queue_labels"].to(self.device)
            self.queue_position = state["queue_position"]
