"""CoFT and CoFT+ (arXiv 2602.04337; method.md section 3), in the project's reading of the abstract.

What is fixed by the abstract and what the project chose is listed in docs/methods.md. In short:
- Pseudo-labels y come from the frozen zero-shot classifier at round 0 and, for CoFT+, from the
  current model at the start of every later round.
- Dual prompts: learnable positive and negative context vectors (CoOp-style, shared by the
  classes) on the frozen text tower give t+_c and t-_c; the probability that y is clean for an
  image feature v is p_clean = softmax(s * [cos(v, t+_y), cos(v, t-_y)])[0]; clean when > 0.5.
- Visual adaptation module: a residual bottleneck adapter on the image features, starting at
  the identity; the yes/no losses of the dual prompts flow into it (the negative prompt's
  regularisation).
- Phase 1 (`phase1_steps`): the image encoder is frozen, the prompts and adapter learn from the
  samples whose pseudo-label the dual prompts judge clean.
- Phase 2: prompts and adapter are frozen and the image encoder is fully fine-tuned. Two models
  collaborate: model 1, the prompt model as phase 1 left it (judged once, on the frozen image
  features of the whole training split), and model 2, the image encoder being fine-tuned (judged
  live, on each batch, with the same prompts). A pseudo-label is kept when both judge it clean;
  when both judge it noisy but predict the same class, that class replaces it; otherwise the
  sample is left out of the classification loss.
- CoFT+ adds rounds of (phase 1, phase 2) with refreshed pseudo-labels, a momentum encoder with a
  queue of keys for a supervised momentum-contrastive loss, and LLM class descriptions as extra
  class text.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latteclip import distributed
from latteclip.data.transforms import eval_transform
from latteclip.errors import LatteclipError
from latteclip.methods.base import Method, StepResult, TrainContext
from latteclip.models import encode_texts
from latteclip.models.adapter import FeatureAdapter
from latteclip.models.prompt_learner import PromptLearner, split_template

YES, NO = 0, 1  # the two outcomes of a dual-prompt pair


# --- the closed-form pieces ------------------------------------------------------------------------
def yes_no_logits(image_features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """[B, 2] logits s * [cos(v, t+_y), cos(v, t-_y)] of each image v against its class y's prompt pair."""
    v = F.normalize(image_features, dim=-1)
    pos = (v * F.normalize(positive[labels], dim=-1)).sum(dim=-1)
    neg = (v * F.normalize(negative[labels], dim=-1)).sum(dim=-1)
    return scale * torch.stack([pos, neg], dim=-1)


def clean_probability(image_features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """p_clean = softmax(s * [cos(v, t+_y), cos(v, t-_y)])[0]: the label y is judged clean when above 0.5."""
    return yes_no_logits(image_features, positive, negative, labels, scale).softmax(dim=-1)[:, YES]


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


def momentum_contrastive_loss(queries: torch.Tensor, query_labels: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, temperature: float) -> torch.Tensor:
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
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in data.values()):
        raise LatteclipError(f'class descriptions file {path} must map class names to lists of texts: {{"forest": ["...", ...]}}')
    index = {name: c for c, name in enumerate(classnames)} | {key: c for c, key in enumerate(class_keys)}
    unknown = sorted(set(data) - set(index))
    if unknown:
        raise LatteclipError(f"class descriptions file {path} names classes the dataset does not have: {', '.join(unknown[:5])}")
    found: dict[int, list[str]] = {}
    for name, texts in data.items():
        found.setdefault(index[name], []).extend(t for t in texts if t.strip())
    return {c: list(dict.fromkeys(texts)) for c, texts in found.items() if texts}


# --- the method ----------------------------------------------------------------------------------------
@dataclass
class CoftOptions:
    phase1_steps: int = 500  # parameter-efficient phase (per round for CoFT+); full fine-tuning after it
    prompt_init: str = ""  # positive context words; "" = the first template's words before the class name
    negative_prompt_init: str = ""  # negative context words; "" = "not " + the positive context
    adapter_reduction: int = 4  # adapter bottleneck width = feature dim / this
    peft_lr_scale: float = 100.0  # prompts and adapter learn at this multiple of the base learning rate
    clean_warmup_steps: int = 50  # first steps of training: every pseudo-label counts as clean
    positive_weight: float = 1.0  # weight of the yes-term on the label's prompt pair
    negative_weight: float = 1.0  # weight of the no-term on a random other class's prompt pair


@dataclass
class CoftPlusOptions(CoftOptions):
    round_steps: int = 1000  # steps per round (phase 1 then phase 2); pseudo-labels refreshed at each round start
    ema_momentum: float = 0.999  # momentum of the key encoder
    queue_size: int = 4096  # keys kept for the momentum-contrastive loss
    contrastive_temperature: float = 0.07
    contrastive_weight: float = 1.0
    class_descriptions: str = ""  # JSON {class name: [LLM texts]}; else kind 'class' texts of --store
    description_weight: float = 1.0  # class weights = normalize(t+_c + this * mean description feature)


class Coft(Method):
    name = "coft"
    exportable_to_open_clip = False  # the feature adapter sits after the image tower
    Options = CoftOptions

    def __init__(self, loaded, info, options: CoftOptions, device: torch.device):
        super().__init__(loaded, info, options, device)
        if info.num_classes < 2:
            raise LatteclipError("CoFT needs at least two classes (the negative prompt pushes away a class other than the label)")
        if options.phase1_steps < 0 or options.clean_warmup_steps < 0:
            raise LatteclipError("--phase1-steps and --clean-warmup-steps cannot be negative")
        prefix, suffix = split_template(info.templates[0])
        positive_init = options.prompt_init or prefix or "a photo of a"
        negative_init = options.negative_prompt_init or f"not {positive_init}"
        self.positive = PromptLearner(self.model, loaded.tokenizer, info.classnames, positive_init, suffix).to(device)
        self.negative = PromptLearner(self.model, loaded.tokenizer, info.classnames, negative_init, suffix).to(device)
        with torch.no_grad():
            dim = self.positive.features(self.model).shape[-1]
        self.adapter = FeatureAdapter(dim, options.adapter_reduction).to(device)
        self.descriptions: torch.Tensor | None = None  # [C, d] mean LLM-description feature per class (CoFT+)
        self.pseudo_labels: torch.Tensor | None = None
        self.labels_round = -1
        self.verdict_clean: torch.Tensor | None = None  # model 1's p_clean of every training image, for phase 2
        self.verdict_prediction: torch.Tensor | None = None
        self.verdict_round = -1
        self.round_features: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (round, frozen features, readable)
        self.round_prompts: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (round, t+, t-) of the round's phase 2

    # --- schedule --------------------------------------------------------------------------------------
    def schedule(self, step: int) -> tuple[int, int]:
        """(round, phase) of a step: CoFT has one round, phase 1 for the first `phase1_steps` steps."""
        return 0, 1 if step < self.options.phase1_steps else 2

    # --- models --------------------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """norm(f(x)): the encoder's features before the adapter."""
        return F.normalize(self.model.encode_image(images), dim=-1)

    def adapted(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.adapter(features), dim=-1)

    def prompt_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(t+, t-) [C, d] each, normalised; gradients reach the context vectors."""
        return self.positive.features(self.model), self.negative.features(self.model)

    def frozen_prompt_features(self, round_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(t+, t-) of the round's phase 2, computed once: the prompts and the text tower do not move in phase 2."""
        if self.round_prompts is None or self.round_prompts[0] != round_index:
            with torch.no_grad():
                self.round_prompts = (round_index, *self.prompt_features())
        return self.round_prompts[1], self.round_prompts[2]

    def class_weights(self, positive: torch.Tensor) -> torch.Tensor:
        """The classifier: the positive prompts, plus the class descriptions when there are any (CoFT+)."""
        if self.descriptions is None:
            return positive
        return F.normalize(positive + self.options.description_weight * self.descriptions, dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapted(self.image_features(images))

    def classifier(self) -> torch.Tensor:
        with torch.no_grad():
            return self.class_weights(self.positive.features(self.model))

    # --- training: setup ------------------------------------------------------------------------------
    def setup_training(self, ctx: TrainContext) -> None:
        super().setup_training(ctx)
        self.eval_train_set = ctx.train_set.with_transform(eval_transform(self.loaded.image_size, self.loaded.mean, self.loaded.std))
        self.model.requires_grad_(False)
        self.model.visual.requires_grad_(True)

    def parameters(self) -> list[nn.Parameter | dict]:
        peft = [self.positive.context, self.negative.context, *self.adapter.parameters()]
        return [*self.model.visual.parameters(), {"params": peft, "lr_scale": self.options.peft_lr_scale}]

    def frozen_features(self, round_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """norm(f(x)) of every training image (evaluation transform) with the encoder as the round began.

        The encoder does not move in phase 1, so the same features serve the round's pseudo-labels
        and, at the phase switch, model 1's verdict; they are kept in memory for the round.
        """
        if self.round_features is None or self.round_features[0] != round_index:
            was_training = self.model.training
            self.model.eval()
            features, valid = self.ctx.extract_features(self.image_features, self.eval_train_set, desc=f"round {round_index} features")
            self.model.train(was_training)
            self.round_features = (round_index, features, valid)
        return self.round_features[1], self.round_features[2]

    def start_round(self, round_index: int, step: int) -> None:
        """Pseudo-labels of the round: zero-shot (with descriptions, when given) at round 0, the current model after."""
        features, valid = self.frozen_features(round_index)
        with torch.no_grad():
            if round_index == 0:
                weights, adapted = self.class_weights(self.zero_shot_classifier()), features.to(self.device)
            else:
                weights, adapted = self.classifier(), self.adapted(features.to(self.device))
            labels = (adapted @ weights.t()).argmax(dim=1).cpu()
        labels[~valid] = -1
        changed = (labels != self.pseudo_labels)[valid].float().mean().item() if self.pseudo_labels is not None else 1.0
        self.pseudo_labels, self.labels_round = labels, round_index
        self.ctx.log({"step": step + 1, "coft/round": round_index, "coft/labels_changed": changed})

    def judge_training_set(self, round_index: int, step: int) -> None:
        """Model 1's verdict for phase 2: the prompt model (frozen encoder + adapter + dual prompts) on every image."""
        features, valid = self.frozen_features(round_index)
        positive, negative = self.frozen_prompt_features(round_index)
        with torch.no_grad():
            adapted = self.adapted(features.to(self.device))
            labels = self.pseudo_labels.clamp_min(0).to(self.device)
            self.verdict_clean = clean_probability(adapted, positive, negative, labels, self.logit_scale()).cpu()
            self.verdict_prediction = (adapted @ self.class_weights(positive).t()).argmax(dim=1).cpu()
        self.verdict_clean[~valid] = 0.0
        self.verdict_round = round_index
        self.ctx.log({"step": step + 1, "coft/model1_clean": (self.verdict_clean[valid] > 0.5).float().mean().item()})

    # --- training: one step -------------------------------------------------------------------------------
    def training_step(self, batch: dict, step: int) -> StepResult:
        round_index, phase = self.schedule(step)
        if self.labels_round != round_index:
            self.start_round(round_index, step)
        if phase == 2 and self.verdict_round != round_index:
            self.judge_training_set(round_index, step)
        index = batch["index"].cpu()
        labels = self.pseudo_labels[index].to(self.device)
        scale = self.logit_scale()
        self.adapter.requires_grad_(phase == 1)
        if phase == 1:
            with torch.no_grad():
                features = self.image_features(batch["image"])
            positive, negative = self.prompt_features()
        else:
            features = self.image_features(batch["image"])
            positive, negative = self.frozen_prompt_features(round_index)
        queries = self.adapted(features)
        weights = self.class_weights(positive)
        logits = scale * queries @ weights.t()
        keep, train_labels = self.filter_labels(phase, step, index, queries.detach(), positive.detach(), negative.detach(), labels, logits.detach())

        metrics: dict[str, float] = {"phase": float(phase), "round": float(round_index), "kept": keep.float().mean().item()}
        loss_ce = F.cross_entropy(logits[keep], train_labels[keep]) if bool(keep.any()) else 0.0 * logits.sum()
        # yes on the pair of the label trained on (the model's own prediction where the label was not kept) ...
        yes_labels = torch.where(keep, train_labels, logits.detach().argmax(dim=1))
        yes_targets = torch.full_like(labels, YES)
        loss_yes = F.cross_entropy(yes_no_logits(queries, positive, negative, yes_labels, scale), yes_targets)
        # ... and no on the pair of a random other class: the negative prompt's hold on the visual features
        generator = torch.Generator().manual_seed(hash((self.ctx.seed, step)) & 0x7FFFFFFF)
        others = random_other_classes(train_labels, self.info.num_classes, generator)
        loss_no = F.cross_entropy(yes_no_logits(queries, positive, negative, others, scale), torch.full_like(labels, NO))
        loss = loss_ce + self.options.positive_weight * loss_yes + self.options.negative_weight * loss_no
        metrics.update(loss_ce=loss_ce.item(), loss_yes=loss_yes.item(), loss_no=loss_no.item())
        loss, state = self.extra_loss(batch, queries, keep, train_labels, loss, metrics)
        metrics["loss"] = loss.item()
        return StepResult(loss, metrics, pseudo_labels=torch.where(keep, train_labels, labels), state=state)

    def filter_labels(
        self,
        phase: int,
        step: int,
        index: torch.Tensor,
        queries: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep mask, label to train on) for the batch.

        Phase 1: the labels the dual prompts judge clean (all of them during the warm-up, before the
        prompts have learned anything). Phase 2: the collaboration of model 1 (verdict made at the
        phase switch) and model 2 (the current encoder): kept when both judge the label clean,
        replaced by their common prediction when both judge it noisy but agree on another class.
        """
        clean_now = clean_probability(queries, positive, negative, labels, self.logit_scale()) > 0.5
        if phase == 1:
            keep = torch.ones_like(clean_now) if step < self.options.clean_warmup_steps else clean_now
            return keep, labels
        clean_before = self.verdict_clean[index].to(self.device) > 0.5
        predicted_before = self.verdict_prediction[index].to(self.device)
        predicted_now = logits.argmax(dim=1)
        both_clean = clean_before & clean_now
        recovered = ~clean_before & ~clean_now & (predicted_before == predicted_now)
        return both_clean | recovered, torch.where(both_clean, labels, predicted_before)

    def extra_loss(
        self, batch: dict, queries: torch.Tensor, keep: torch.Tensor, train_labels: torch.Tensor, loss: torch.Tensor, metrics: dict[str, float]
    ) -> tuple[torch.Tensor, dict]:
        """Terms CoFT+ adds to the loss (none for CoFT), and what `after_optimizer_step` needs."""
        return loss, {}

    # --- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "positive": self.positive.state_dict(),
            "negative": self.negative.state_dict(),
            "adapter": self.adapter.state_dict(),
            "descriptions": None if self.descriptions is None else self.descriptions.cpu(),
            "pseudo_labels": self.pseudo_labels,
            "labels_round": self.labels_round,
            "verdict_clean": self.verdict_clean,
            "verdict_prediction": self.verdict_prediction,
            "verdict_round": self.verdict_round,
        }

    def load_state_dict(self, state: dict) -> None:
        self.positive.load_state_dict(state["positive"])
        self.negative.load_state_dict(state["negative"])
        self.adapter.load_state_dict(state["adapter"])
        self.descriptions = None if state["descriptions"] is None else state["descriptions"].to(self.device)
        self.pseudo_labels = state["pseudo_labels"]
        self.labels_round = state["labels_round"]
        self.verdict_clean = state["verdict_clean"]
        self.verdict_prediction = state["verdict_prediction"]
        self.verdict_round = state["verdict_round"]
        self.round_features = None
        self.round_prompts = None


class CoftPlus(Coft):
    name = "coft_plus"
    Options = CoftPlusOptions

    def __init__(self, loaded, info, options: CoftPlusOptions, device: torch.device):
        super().__init__(loaded, info, options, device)
        if not options.phase1_steps < options.round_steps:
            raise LatteclipError(f"--phase1-steps ({options.phase1_steps}) must be below --round-steps ({options.round_steps}) so that each round has a phase 2")
        if not 0.0 <= options.ema_momentum < 1.0 or options.queue_size < 1:
            raise LatteclipError("--ema-momentum must lie in [0, 1) and --queue-size be at least 1")
        self.online = nn.ModuleDict({"visual": self.model.visual, "adapter": self.adapter})
        self.key_encoder = copy.deepcopy(self.online).requires_grad_(False).eval()
        dim = self.adapter.up.out_features
        self.queue_keys = torch.zeros(options.queue_size, dim, device=device)
        self.queue_labels = torch.full((options.queue_size,), -1, dtype=torch.long, device=device)  # -1: empty slot
        self.queue_position = 0

    def schedule(self, step: int) -> tuple[int, int]:
        round_index, position = divmod(step, self.options.round_steps)
        return round_index, 1 if position < self.options.phase1_steps else 2

    def setup_training(self, ctx: TrainContext) -> None:
        super().setup_training(ctx)
        opts = self.options
        if opts.class_descriptions:
            texts = load_class_descriptions(opts.class_descriptions, self.info.classnames, self.info.class_keys)
        elif ctx.store:
            texts = self.store_descriptions(ctx.store)
        else:
            texts = {}
        if not texts:
            raise LatteclipError(
                "CoFT+ needs LLM class descriptions: pass --class-descriptions FILE.json "
                '({"class name": ["description", ...]}) or a --store holding kind \'class\' descriptions of the training images'
            )
        self.descriptions = self.description_features(texts)

    def store_descriptions(self, store_path: str) -> dict[int, list[str]]:
        """Kind 'class' texts of the training images in the description store, grouped by the image's zero-shot class."""
        from latteclip.describe.jobs import image_hashes
        from latteclip.describe.store import DescriptionStore

        if not Path(store_path).is_file():
            raise LatteclipError(f"description store {store_path} does not exist")
        hashes = image_hashes(self.ctx.train_set)  # None for an unreadable image: it gets no text
        store = DescriptionStore(store_path)
        try:
            texts = store.get_texts(hashes, "class")
        finally:
            store.close()
        if not any(texts):
            return {}
        features, valid = self.frozen_features(0)
        with torch.no_grad():
            classes = (features.to(self.device) @ self.zero_shot_classifier().t()).argmax(dim=1).cpu()
        grouped: dict[int, list[str]] = {}
        for text, c, readable in zip(texts, classes.tolist(), valid.tolist()):
            if text and readable:
                grouped.setdefault(c, []).append(text)
        return {c: list(dict.fromkeys(t)) for c, t in grouped.items()}

    @torch.no_grad()
    def description_features(self, texts: dict[int, list[str]]) -> torch.Tensor:
        """[C, d]: the normalised mean feature of each class's descriptions (zeros for a class without any)."""
        features = torch.zeros(self.info.num_classes, self.adapter.up.out_features, device=self.device)
        for c, class_texts in texts.items():
            features[c] = F.normalize(encode_texts(self.model, self.tokens, class_texts, self.device).mean(dim=0), dim=-1)
        return features

    def extra_loss(
        self, batch: dict, queries: torch.Tensor, keep: torch.Tensor, train_labels: torch.Tensor, loss: torch.Tensor, metrics: dict[str, float]
    ) -> tuple[torch.Tensor, dict]:
        """The momentum-contrastive term: kept queries against this batch's keys and the queue."""
        with torch.no_grad():
            keys = F.normalize(self.key_encoder["adapter"](F.normalize(self.key_encoder["visual"](batch["image"]), dim=-1)), dim=-1).float()
        key_labels = torch.where(keep, train_labels, torch.full_like(train_labels, -1))
        filled = self.queue_labels >= 0
        all_keys = torch.cat([keys, self.queue_keys[filled]])
        all_labels = torch.cat([key_labels, self.queue_labels[filled]])
        if bool(keep.any()):
            loss_mc = momentum_contrastive_loss(queries[keep], train_labels[keep], all_keys, all_labels, self.options.contrastive_temperature)
        else:
            loss_mc = 0.0 * queries.sum()
        metrics["loss_contrastive"] = loss_mc.item()
        return loss + self.options.contrastive_weight * loss_mc, {"keys": keys[keep], "key_labels": train_labels[keep]}

    def after_optimizer_step(self, batch: dict, result: StepResult, step: int) -> None:
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
        return {
            **super().state_dict(),
            "key_encoder": {k: v.detach().cpu() for k, v in self.key_encoder.state_dict().items()},
            "queue_keys": self.queue_keys.cpu(),
            "queue_labels": self.queue_labels.cpu(),
            "queue_position": self.queue_position,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.key_encoder.load_state_dict(state["key_encoder"])
        self.queue_keys = state["queue_keys"].to(self.device)
        self.queue_labels = state["queue_labels"].to(self.device)
        self.queue_position = state["queue_position"]
