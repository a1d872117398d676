"""LatteCLIP (method.md 1.3): class prototypes learnt from noisy synthetic texts.

Per step, for each pseudo-label kind k in {zs, ft}: the texts of each image (class text of its
label, its image description, its group description) are mixed with weights from the Dynamic
Feature Mixer (Eq. 1), blended with the label's prototype (Eq. 2), and contrasted with the image
(Eq. 3). After the optimizer step, each prototype of a class in the batch becomes the normalised
mean of its prototype-text embeddings: the authors' rule, in which Eq. (2)'s alpha is the
momentum (mu = 0). mu > 0 adds the paper's literal second momentum. The mixer's weights (Eq. 1) are
taken against the prototypes as they were at the start of the epoch, as the authors' code does
(`mixer_prototypes: current` weighs against the live bank); docs/methods.md lists every point where
the paper's text and the authors' runs differ, and which one is the default.
"""

from __future__ import annotations

import json
import logging
import random

import torch
import torch.nn.functional as F

from latteclip import distributed
from latteclip.describe.jobs import image_hashes
from latteclip.describe.store import DescriptionSet, DescriptionStore
from latteclip.errors import LatteclipError
from latteclip.methods.base import Method, StepResult, TrainContext
from latteclip.methods.options import TEXT_KINDS, LatteCLIPOptions
from latteclip.models import PrototypeBank, encode_texts
from latteclip.models.losses import contrastive_loss
from latteclip.models.prototypes import full_precision
from latteclip.paths import atomic_write_bytes

MIXER_EPS = 1e-6
MIXER_PROTOTYPES = ("epoch", "current")
log = logging.getLogger(__name__)


def mixer_weights(text_features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. (1): top-1 minus top-2 cosine of each text to the prototypes, [N] in fp32; no gradient flows.

    A text close to one class and far from the others is trusted; one between two classes is not.
    """
    with torch.no_grad(), full_precision(text_features):
        cos = F.normalize(text_features.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).t()
        if cos.shape[1] < 2:
            return torch.ones(cos.shape[0], device=cos.device)
        top2 = cos.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]


def mixed_text_embedding(text_features: torch.Tensor, prototypes: torch.Tensor, use_mixer: bool = True) -> torch.Tensor:
    """The mixer's weighted mean of each sample's K texts, sum_T w(T) e(T) / sum_T w(T), [B, d] in fp32."""
    return mix_with_weights(text_features, prototypes, use_mixer)[0]


def mix_with_weights(
    text_features: torch.Tensor, prototypes: torch.Tensor, use_mixer: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mix [B, d] and Eq. (1)'s weight of each text [B, K] (so a step reports the weights it used).

    Each weight gets 1e-6 in the mix so that a sample whose texts all tie (weight 0) falls back to the
    plain mean instead of dividing by zero. Mixer off: the mix weighs every text 1.
    """
    batch, k, dim = text_features.shape
    with full_precision(text_features):
        features = text_features.float()
        weights = mixer_weights(features.reshape(batch * k, dim), prototypes).view(batch, k)
        mixing = weights + MIXER_EPS if use_mixer else torch.ones_like(weights)
        return (mixing.unsqueeze(-1) * features).sum(dim=1) / mixing.sum(dim=1, keepdim=True), weights


def prototype_text_embedding(
    text_features: torch.Tensor,
    label_prototypes: torch.Tensor,
    prototypes: torch.Tensor,
    alpha: float,
    use_mixer: bool = True,
) -> torch.Tensor:
    """Eq. (2): t = (1 - alpha) * sum_T w(T) e(T) / sum_T w(T) + alpha * p_c, [B, d] in fp32.

    text_features [B, K, d] are the K normalised texts of each sample; label_prototypes [B, d] are
    p_c of each sample's pseudo-label. fp32 whatever the autocast dtype: t moves p_c by 1 - alpha
    (1 %) of the way to the texts, a step bf16 cannot represent on unit vectors.
    """
    return blend_with_prototypes(mixed_text_embedding(text_features, prototypes, use_mixer), label_prototypes, alpha)


def blend_with_prototypes(mixed: torch.Tensor, label_prototypes: torch.Tensor, alpha: float) -> torch.Tensor:
    """The last term of Eq. (2), in fp32: (1 - alpha) * mixed + alpha * p_c."""
    with full_precision(mixed):
        return (1.0 - alpha) * mixed.float() + alpha * label_prototypes.float()


class LatteCLIP(Method):
    name = "latteclip"
    Options = LatteCLIPOptions
    needs_zero_shot_labels = True

    def __init__(self, loaded, info, options: LatteCLIPOptions, device):
        super().__init__(loaded, info, options, device)
        self.mean_mixer_weights: dict[str, float] | None = None  # per text kind, set by finish_training
        unknown = [t for t in options.texts if t not in TEXT_KINDS]
        if not options.texts or unknown:
            raise LatteclipError(
                f"--texts must be a non-empty subset of {','.join(TEXT_KINDS)} (got {','.join(options.texts)})"
            )
        if not (options.loss_zs or options.loss_ft):
            raise LatteclipError("LatteCLIP needs at least one of its losses: drop --no-loss-zs or --no-loss-ft")
        if options.missing_descriptions not in ("error", "class"):
            raise LatteclipError("--missing-descriptions must be 'error' or 'class'")
        if options.mixer_prototypes not in MIXER_PROTOTYPES:
            raise LatteclipError(
                f"--mixer-prototypes must be one of {', '.join(MIXER_PROTOTYPES)}, not '{options.mixer_prototypes}'"
            )
        if options.group_text not in ("random", "own"):
            raise LatteclipError(
                "--group-text must be 'random' (a group of the image's zero-shot class per visit) or 'own'"
            )
        self.bank: PrototypeBank | None = None
        self.epoch_prototypes: torch.Tensor | None = None  # the mixer's snapshot (mixer_prototypes: epoch)
        self.label_kinds = [k for k, on in (("zs", options.loss_zs), ("ft", options.loss_ft)) if on]

    # --- set-up -------------------------------------------------------------------------------
    def setup_training(self, ctx: TrainContext) -> None:
        super().setup_training(ctx)
        self.bank = PrototypeBank(self.zero_shot_classifier()).to(self.device)
        self.start_prototypes = (
            self.bank.vectors.clone()
        )  # setup runs before a resumed run loads its weights: the zero-shot start
        self.zs_labels = ctx.zero_shot_labels.to(self.device)  # indexed by whole batches in a step
        self.zs_label_of: list[int] = ctx.zero_shot_labels.tolist()  # per image on the host: no device sync per sample
        self.class_texts = self.info.class_texts()
        kinds = [kind for kind in ("image", "group") if kind in self.options.texts]
        self.image_hashes = image_hashes(ctx.train_set, progress=False) if kinds else []  # None: unreadable
        self.group_variants: list[str | None] = []  # the group each image's text describes (the gallery shows it)
        self.descriptions = {kind: self.load_descriptions(kind, self.image_hashes, ctx) for kind in kinds}
        self.group_pools = self.described_images_by_class() if "group" in kinds else {}

    def described_images_by_class(self) -> dict[int, list[int]]:
        """The images of each zero-shot class that have a group description: the groups a visit draws from."""
        pools: dict[int, list[int]] = {}
        for index, (label, text) in enumerate(zip(self.zs_label_of, self.descriptions["group"])):
            if label >= 0 and text is not None:
                pools.setdefault(label, []).append(index)
        return pools

    def description_set(self, store: DescriptionStore, kind: str, hashes: list[str | None]) -> DescriptionSet | None:
        """The description stage (or import) whose `kind` texts this run reads: by `described_by` when named, the newest
        of those drawn with the run's seed (or imported) over the run's share of the training images, else the newest;
        its contract goes to the run folder."""
        sets = store.sets_for(self.info.name, hashes, kind, self.options.described_by)
        if not sets:
            return None
        # a set without a seed (imported texts) draws nothing, so it is as good as one of the run's seed
        seed, share = self.ctx.seed, self.ctx.train_fraction
        chosen = max(
            sets,
            key=lambda found: (
                found.contract.get("seed", seed) == seed,
                found.contract.get("train_fraction", 1.0) == share,
                found.created,
            ),
        )
        self.record_read(kind, {"set": chosen.name, **chosen.contract})
        return chosen

    def record_read(self, kind: str, what: dict) -> None:
        """descriptions.json in the run folder: which texts of each kind the run read, and how they were made.

        Rank 0 alone writes it, atomically: every rank reads the same set, and a rank reading while another writes
        would see half a file."""
        if not distributed.is_main():
            return
        record = self.ctx.run_dir / "descriptions.json"
        recorded = json.loads(record.read_text()) if record.is_file() else {}
        atomic_write_bytes(record, json.dumps({**recorded, kind: what}, indent=1).encode())

    def load_descriptions(self, kind: str, hashes: list[str | None], ctx: TrainContext) -> list[str | None]:
        """The `kind` text of each training image from the description set it reads (None where there is none; an
        unreadable image has none). A store of an earlier version, which recorded no sets, gives its newest texts."""
        with DescriptionStore(ctx.store) as store:
            chosen = self.description_set(store, kind, hashes)
            if chosen is not None:
                rows = store.set_rows(chosen.name, hashes, kind)
                texts = [text for text, _ in rows]
                if kind == "group":
                    self.group_variants = [variant for _, variant in rows]
            elif store.has_sets(self.info.name, kind):
                texts = [None] * len(hashes)  # described, but not by the describer asked for (or analysis groups only)
            else:
                note = (
                    f"{store.path} records no description sets (written by an earlier version): the newest {kind} "
                    "text of each image is read; run the same `latteclip describe` again to record how they were "
                    "made"
                )
                log.warning(note)
                self.record_read(kind, {"set": None, "note": note})
                texts = store.get_texts(hashes, kind, model=self.options.described_by)
        # an unreadable image is skipped by training and never described, so it is not counted missing
        missing = sum(t is None for t, h in zip(texts, hashes) if h is not None)
        if missing and self.options.missing_descriptions == "error":
            raise LatteclipError(
                f"{missing} of {len(texts)} training images have no {kind} description in {store.path}; generate them "
                f"with `latteclip describe --dataset {self.info.name} --root ROOT --store {store.path} --lmm openai "
                "--lmm-url URL` (or --lmm offline), or pass --missing-descriptions class to use class texts"
            )
        ctx.log({"step": 0, f"descriptions/{kind}_missing": missing})
        return texts

    # --- one step -----------------------------------------------------------------------------
    def description(self, kind: str, index: int, step: int | None = None) -> str:
        """An image's description of `kind`, or (when allowed) its zero-shot class text if it has none.

        In a training step (`step` given) with --group-text random, the group text is that of an image
        drawn at random among those of the same zero-shot class, seeded by (seed, step, index): every
        visit draws anew, as in the authors' runs, and a resumed run draws the same.
        """
        if kind == "group" and step is not None and self.options.group_text == "random":
            pool = self.group_pools.get(self.zs_label_of[index])
            if pool:
                index = random.Random(f"{self.ctx.seed}:{step}:{index}").choice(pool)
        text = self.descriptions[kind][index]
        return text if text is not None else self.class_texts[self.zs_label_of[index]]

    def sample_texts(self, index: int, label: int) -> list[str]:
        """The texts of one image for one pseudo-label, in the order of options.texts."""
        return [
            self.class_texts[label] if kind == "class" else self.description(kind, index) for kind in self.options.texts
        ]

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Fast: each distinct text once, tokens cut to the longest. Reference: every text, 77 tokens."""
        if self.options.fast_text:
            return encode_texts(self.model, self.tokens, texts, self.device)
        tokens = self.loaded.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    def step_text_features(
        self, indices: list[int], labels: dict[str, list[int]], step: int
    ) -> dict[str, torch.Tensor]:
        """[B, K, d] text features per label kind (labels on the host); image and group texts serve both kinds."""
        slots: dict[str, list[str]] = {}
        for kind in self.label_kinds:
            if "class" in self.options.texts:
                slots[f"class_{kind}"] = [self.class_texts[c] for c in labels[kind]]
        for kind in ("image", "group"):
            if kind in self.options.texts:
                slots[kind] = [self.description(kind, i, step) for i in indices]
        flat = [text for texts in slots.values() for text in texts]
        encoded = dict(zip(slots, self.encode(flat).view(len(slots), len(indices), -1)))
        return {
            kind: torch.stack([encoded[f"class_{kind}" if t == "class" else t] for t in self.options.texts], dim=1)
            for kind in self.label_kinds
        }

    def training_step(self, batch: dict, step: int) -> StepResult:
        images, indices = batch["image"], batch["index"]
        u = F.normalize(self.model.encode_image(images), dim=-1)
        prototypes = self.bank.vectors
        with torch.no_grad(), full_precision(u):
            ft_labels = (u.detach().float() @ F.normalize(prototypes, dim=-1).t()).argmax(dim=-1)
        labels = {"zs": self.zs_labels[indices], "ft": ft_labels}
        index_list = indices.tolist()
        # the texts need the labels on the host: the zero-shot ones are there already, ft's cost one copy per step
        host_labels = {"zs": [self.zs_label_of[i] for i in index_list], "ft": ft_labels.tolist()}
        features = self.step_text_features(index_list, host_labels, step)
        mixer_against = self.mixer_prototypes(step)

        loss = u.new_zeros(())
        metrics: dict[str, float] = {}
        embeddings, embedding_labels, step_weights = [], [], []
        for kind in self.label_kinds:
            mixed, weights = mix_with_weights(features[kind], mixer_against, self.options.mixer)
            step_weights.append(weights)
            t = blend_with_prototypes(mixed, prototypes[labels[kind]], self.options.alpha)
            part = contrastive_loss(u, F.normalize(t, dim=-1), self.model.logit_scale)
            loss = loss + part
            metrics[f"loss_{kind}"] = part.item()
            # what the prototypes move to: t (alpha is the momentum), or the mixed texts alone without momentum
            embeddings.append(t.detach() if self.options.momentum else mixed.detach())
            embedding_labels.append(labels[kind])
        weights = torch.cat(step_weights)
        for position, kind in enumerate(self.options.texts):
            metrics[f"mixer/weight_{kind}"] = weights[:, position].mean().item()
        metrics["loss"] = loss.item()
        # drift: how far the descriptions have moved the classifier (1.0 = still the zero-shot class texts)
        metrics["prototypes/cos_to_start"] = (
            (F.normalize(prototypes, dim=-1) * self.start_prototypes).sum(-1).mean().item()
        )
        metrics["analysis/pl_agreement"] = (labels["zs"] == labels["ft"]).float().mean().item()
        return StepResult(
            loss,
            metrics,
            pseudo_labels=ft_labels,
            state={"embeddings": torch.cat(embeddings), "labels": torch.cat(embedding_labels)},
        )

    def mixer_prototypes(self, step: int) -> torch.Tensor:
        """The prototypes Eq. (1) weighs the texts against: a copy of the bank taken at each epoch's first step
        (the authors' code stacks its prototypes once per epoch), or the bank itself (`current`).

        The copy is method state, so a run resumed inside an epoch weighs against the same snapshot.
        """
        if self.options.mixer_prototypes == "current":
            return self.bank.vectors
        if self.epoch_prototypes is None or step % self.ctx.steps_per_epoch == 0:
            self.epoch_prototypes = self.bank.vectors.clone()
        return self.epoch_prototypes

    def after_optimizer_step(self, batch: dict, result: StepResult, step: int) -> None:
        mu = self.options.mu if self.options.momentum else 0.0
        self.bank.momentum_update(result.state["embeddings"], result.state["labels"], mu)

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """The mean mixer weight of each text kind over the images finish_training sampled (rank 0, after it)."""
        return {"mean_mixer_weights": self.mean_mixer_weights} if self.mean_mixer_weights is not None else {}

    # --- inference and state ------------------------------------------------------------------
    def classifier(self) -> torch.Tensor:
        if self.bank is None:
            return self.zero_shot_classifier()
        return F.normalize(self.bank.vectors, dim=-1)

    def state_dict(self) -> dict:
        state = {"prototypes": self.bank.state_dict()} if self.bank is not None else {}
        if self.epoch_prototypes is not None:
            state["epoch_prototypes"] = self.epoch_prototypes.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "prototypes" in state:
            self.bank = PrototypeBank(state["prototypes"]["vectors"]).to(self.device)
        if "epoch_prototypes" in state:
            self.epoch_prototypes = state["epoch_prototypes"].to(self.device)

    # --- artefacts for the report ----------------------------------------------------------------
    def group_members(self, indices: list[int]) -> dict[int, list[str]]:
        """The images of each anchor's group collage in cell order, as the describe stage recorded them."""
        with DescriptionStore(self.ctx.store) as store:
            wanted = {self.image_hashes[i]: i for i in indices if self.image_hashes[i] is not None}
            found: dict[int, list[str]] = {}
            exact: set[int] = set()  # the run's own draw wins, as in load_descriptions
            for row in store.rows(image_hashes=list(wanted)):
                index = wanted[row["image_hash"]]
                meta = row["meta"] or {}
                if row["kind"] == "group" and ("cells" in meta or "members" in meta) and index not in exact:
                    # stores written before groups recorded their cells list the members besides the anchor
                    found[index] = meta.get("cells") or [self.ctx.train_set.samples[index].path, *meta["members"]]
                    if self.group_variants and row["variant"] == self.group_variants[index]:
                        exact.add(index)
            return found

    @torch.no_grad()
    def finish_training(self) -> None:
        """Write gallery.json (a few images with texts, weights and both labels) and mixer_weights.json."""
        dataset = self.ctx.train_set
        rng = random.Random(self.ctx.seed)
        valid = [i for i, label in enumerate(self.zs_label_of) if label >= 0]
        picks = sorted(rng.sample(valid, min(len(valid), 512)))
        prototypes = self.bank.vectors
        names = self.info.classnames
        k = len(self.options.texts)
        texts = [t for i in picks for t in self.sample_texts(i, self.zs_label_of[i])]
        features = self.encode(texts).float()
        weights = mixer_weights(features, prototypes).view(len(picks), k)
        distribution = {kind: weights[:, j].tolist() for j, kind in enumerate(self.options.texts)}
        (self.ctx.run_dir / "mixer_weights.json").write_text(json.dumps(distribution))
        self.mean_mixer_weights = {kind: sum(w) / len(w) for kind, w in distribution.items() if w}

        gallery_picks = picks[: self.options.gallery_size]
        members = self.group_members(gallery_picks) if "group" in self.options.texts else {}
        eval_set = dataset.with_transform(self.ctx.eval_transform) if self.ctx.eval_transform else None
        gallery = []
        for row, i in enumerate(gallery_picks):
            ft_label = None
            if eval_set is not None:
                item = eval_set[i]
                if not item.get("corrupt"):
                    u = F.normalize(self.model.encode_image(item["image"].unsqueeze(0).to(self.device)), dim=-1)
                    ft_label = int((u.float() @ F.normalize(prototypes, dim=-1).t()).argmax())
            zs_label = self.zs_label_of[i]
            gallery.append(
                {
                    "image": dataset.samples[i].path,
                    "zs_label": names[zs_label],
                    "ft_label": names[ft_label] if ft_label is not None else None,
                    "texts": dict(zip(self.options.texts, self.sample_texts(i, zs_label))),
                    "weights": {kind: weights[row, j].item() for j, kind in enumerate(self.options.texts)},
                    "group_members": members.get(i, []),
                }
            )
        (self.ctx.run_dir / "gallery.json").write_text(json.dumps(gallery, indent=1))
