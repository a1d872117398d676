"""ReCLIP (Hu et al., WACV 2024), inductive, as the LatteCLIP paper re-ran it (method.md section 2).

Two branches share one CLIP model but train disjoint parameters:
- ReCLIP-V trains only the LayerNorms of the image tower and classifies by class centroids of
  its own image features;
- ReCLIP-T trains only the LayerNorms of the text tower and classifies the images of the
  *pre-trained* image tower (the image-tower LayerNorms as they were before training, kept in
  the method's state) against the class texts.
Once per epoch (or every `refresh_every` steps) each branch labels the whole training split by label propagation
over a k-nearest-neighbour graph of its image features plus one seed node per class text,
after a projection that removes the class-agnostic text direction; a training sample is used
only where the two branches' labels agree. Inference averages the two branches' cosines.

As its authors ran it (their public code, michiganleon/ReCLIP_WACV): the label propagation and the projection
use the ensemble of CLIP's templates for the dataset (`lp_templates: clip`), the learning rate is constant
(configs/methods/reclip.yaml), and ReCLIP-V's loss is divided by the batch size (`vision_loss_over_batch`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from latteclip import distributed
from latteclip.data.coop import load_spec, spec_names
from latteclip.errors import LatteclipError
from latteclip.methods.base import Method, StepResult, TrainContext
from latteclip.methods.options import ReclipOptions
from latteclip.models import class_text_features, encode_texts
from latteclip.models.prototypes import full_precision

SOLVERS = ("iterative", "closed_form")
LP_TEMPLATES = ("clip", "run")


# --- the closed-form pieces ------------------------------------------------------------------------
def class_agnostic_projection(text_features: torch.Tensor, drop: int = 1, max_dim: int = 0) -> torch.Tensor:
    """P [d, d] onto the span of the class texts without their `drop` leading principal directions.

    With T^T = U S V^T (class text features as columns), P = U_k U_k^T over the left singular
    vectors k = drop .. max_dim (all when max_dim is 0). Projecting onto the texts' span removes
    directions no class name explains; dropping the first singular vector removes the one that
    every class text shares ("a photo of ..."), which carries no class information.
    """
    left, _, _ = torch.linalg.svd(text_features.float().t(), full_matrices=False)
    end = left.shape[1] if max_dim <= 0 else min(max_dim, left.shape[1])
    if drop >= end:
        raise LatteclipError(
            f"projection keeps no direction: drop={drop} of {end} text directions (lower --projection-drop)"
        )
    basis = left[:, drop:end]
    return basis @ basis.t()


def knn_affinity(points: torch.Tensor, k: int) -> torch.Tensor:
    """S = D^-1/2 W D^-1/2 (sparse [N, N]) of the symmetric k-nearest-neighbour graph of L2-normalised points.

    Affinity (cos + 1) / 2, self excluded, the k largest kept per row, W = (A + A^T) / 2. Rows are
    processed in blocks so that the dense N x N similarity never exists at once.
    """
    n = points.shape[0]
    k = min(k, n - 1)
    rows_per_block = max(1, 2**24 // n)
    values, columns = [], []
    for start in range(0, n, rows_per_block):
        block = (points[start : start + rows_per_block] @ points.t() + 1.0) / 2.0
        rows = torch.arange(block.shape[0], device=points.device)
        block[rows, start + rows] = float("-inf")
        top_values, top_columns = block.topk(k, dim=1)
        values.append(top_values)
        columns.append(top_columns)
    rows = torch.arange(n, device=points.device).repeat_interleave(k)
    nearest = torch.sparse_coo_tensor(
        torch.stack([rows, torch.cat(columns).flatten()]), torch.cat(values).flatten(), (n, n), check_invariants=True
    )
    graph = ((nearest + nearest.t()) / 2.0).coalesce()
    degree = torch.sparse.sum(graph, dim=1).to_dense().clamp_min(1e-12)
    inv_sqrt = degree.rsqrt()
    index = graph.indices()
    return torch.sparse_coo_tensor(
        index, graph.values() * inv_sqrt[index[0]] * inv_sqrt[index[1]], (n, n), check_invariants=True
    ).coalesce()


def conjugate_gradient(
    apply: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, iterations: int, tol: float
) -> torch.Tensor:
    """Solve M X = rhs column by column for a symmetric positive definite M given as `apply(X) = M X`."""
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    residual_sq = (residual * residual).sum(dim=0)
    stop = (tol * rhs.norm(dim=0)) ** 2
    for _ in range(iterations):
        if bool((residual_sq <= stop).all()):
            break
        applied = apply(direction)
        curvature = (direction * applied).sum(dim=0)
        step = torch.where(curvature > 0, residual_sq / curvature.clamp_min(1e-30), torch.zeros_like(curvature))
        solution = solution + step * direction
        residual = residual - step * applied
        new_residual_sq = (residual * residual).sum(dim=0)
        direction = residual + (new_residual_sq / residual_sq.clamp_min(1e-30)) * direction
        residual_sq = new_residual_sq
    return solution


def propagate_labels(
    image_features: torch.Tensor,
    seed_features: torch.Tensor,
    k: int,
    alpha: float,
    solver: str = "iterative",
    iterations: int = 20,
    tol: float = 1e-6,
    projection: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label-propagation scores [N, C] of each image, the class texts being the labelled nodes.

    Nodes: one seed per class (row c of `seed_features` is labelled c) and every image, each
    projected by `projection` (when given) and L2-normalised; S from `knn_affinity`; the scores
    solve (I - alpha S) F = Y with Y one-hot on the seeds. `closed_form` solves the dense system
    exactly (memory N^2); `iterative` runs `iterations` conjugate-gradient steps on the sparse one.
    """
    if solver not in SOLVERS:
        raise LatteclipError(f"unknown label-propagation solver '{solver}': use one of {', '.join(SOLVERS)}")
    num_classes = seed_features.shape[0]
    points = torch.cat([seed_features, image_features]).float()
    if projection is not None:
        points = points @ projection.float()
    points = F.normalize(points, dim=-1)
    graph = knn_affinity(points, k)
    seeds = torch.zeros(points.shape[0], num_classes, device=points.device)
    seeds[torch.arange(num_classes), torch.arange(num_classes)] = 1.0
    if solver == "closed_form":
        system = torch.eye(points.shape[0], device=points.device) - alpha * graph.to_dense()
        scores = torch.linalg.solve(system, seeds)
    else:
        scores = conjugate_gradient(lambda x: x - alpha * torch.sparse.mm(graph, x), seeds, iterations, tol)
    return scores[num_classes:]


def class_centroids(features: torch.Tensor, labels: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Normalised mean feature of each class's images; a class no image was given keeps its previous centroid."""
    sums = torch.zeros_like(previous).index_add_(0, labels, features.to(previous.dtype))
    counts = torch.bincount(labels, minlength=previous.shape[0])
    centroids = previous.clone()
    present = counts > 0
    centroids[present] = F.normalize(sums[present], dim=-1)
    return centroids


def norm_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The LayerNorm gains and biases inside `module`, by their names within it."""
    return {
        f"{name}.{pname}" if name else pname: param
        for name, sub in module.named_modules()
        if isinstance(sub, nn.LayerNorm)
        for pname, param in sub.named_parameters(recurse=False)
    }


def text_tower(model: nn.Module) -> list[nn.Module]:
    """The modules of the text tower: OpenCLIP's CLIP keeps them on the model, CustomTextCLIP in `.text`."""
    if hasattr(model, "text"):
        return [model.text]
    return [model.transformer, model.ln_final]


# --- the method ----------------------------------------------------------------------------------------
class Reclip(Method):
    name = "reclip"
    exportable_to_open_clip = False  # two branches and a projection: not one OpenCLIP image tower
    Options = ReclipOptions

    def __init__(self, loaded, info, options: ReclipOptions, device: torch.device):
        super().__init__(loaded, info, options, device)
        if options.lp_solver not in SOLVERS:
            raise LatteclipError(f"--lp-solver must be one of {', '.join(SOLVERS)}, not '{options.lp_solver}'")
        if not 0.0 < options.lp_alpha < 1.0:
            raise LatteclipError(f"--lp-alpha must lie in (0, 1), not {options.lp_alpha}")
        if options.lp_templates not in LP_TEMPLATES:
            raise LatteclipError(
                f"--lp-templates must be one of {', '.join(LP_TEMPLATES)}, not '{options.lp_templates}'"
            )
        if options.refresh_every < 0 or options.lp_neighbors < 1:
            raise LatteclipError("--refresh-every must be 0 (once per epoch) or more, and --lp-neighbors at least 1")
        # state as it is before training; `load_state_dict` replaces it for resumed and evaluated runs
        self.vision_norms = {name: p.detach().clone() for name, p in norm_parameters(self.model.visual).items()}
        self.initial_text = self.ensemble_text_features()
        self.centroids = self.initial_text.clone()
        self.labels_vision: torch.Tensor | None = None
        self.labels_text: torch.Tensor | None = None
        self.refreshed_round = -1
        self.frozen_train_features: torch.Tensor | None = None  # ReCLIP-T's image features never change: computed once

    # --- the two branches -------------------------------------------------------------------------
    def propagation_templates(self) -> list[str]:
        """The templates whose ensemble seeds the label propagation and spans the projection.

        `clip`: CLIP's list for a paper dataset (e.g. EuroSAT's "a centered satellite photo of {}." and its
        siblings), the prompts the authors' code averages there, whatever the run's --prompt-set; datasets
        without one (folders, CSV) use the run's templates, as `run` does everywhere.
        """
        if self.options.lp_templates == "clip" and self.info.name in spec_names():
            return list(load_spec(self.info.name)["templates"])
        return self.info.templates

    def ensemble_text_features(self) -> torch.Tensor:
        return class_text_features(
            self.model, self.tokens, self.info.classnames, self.propagation_templates(), self.device
        )

    def vision_branch_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images), dim=-1)

    def text_branch_images(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower with its LayerNorms as before training (the branch that adapts only text)."""
        return F.normalize(torch.func.functional_call(self.model.visual, self.vision_norms, (images,)), dim=-1)

    def image_norms_untrained(self) -> bool:
        """Whether the image tower's LayerNorms still equal the text branch's (bitwise), so both branches encode images
        alike."""
        current = norm_parameters(self.model.visual)
        return all(torch.equal(current[name], value) for name, value in self.vision_norms.items())

    def text_branch_classes(self) -> torch.Tensor:
        return encode_texts(self.model, self.tokens, self.info.class_texts(), self.device)

    # --- training -----------------------------------------------------------------------------------
    @staticmethod
    def default_epochs(num_samples: int) -> int:
        """The ReCLIP authors' schedule: min(100, N / 5000 + 2) epochs."""
        return min(100, num_samples // 5000 + 2)

    def setup_training(self, ctx: TrainContext) -> None:
        super().setup_training(ctx)
        self.eval_train_set = ctx.train_set.with_transform(ctx.eval_transform)
        self.model.requires_grad_(False)
        for param in self.norm_params():
            param.requires_grad_(True)

    def norm_params(self) -> list[nn.Parameter]:
        modules = [self.model.visual, *text_tower(self.model)]
        return [param for module in modules for param in norm_parameters(module).values()]

    def parameters(self) -> list[nn.Parameter]:
        return self.norm_params()

    def refresh_pseudo_labels(self, step: int) -> None:
        """Label propagation for both branches over the whole training split (evaluation transform)."""
        was_training = self.model.training
        self.model.eval()
        vision_features, valid = self.ctx.extract_features(
            self.vision_branch_images, self.eval_train_set, desc="ReCLIP-V features"
        )
        if self.frozen_train_features is None:
            if self.image_norms_untrained():  # a fresh run's first refresh: both branches are the same image tower
                self.frozen_train_features = vision_features
            else:
                self.frozen_train_features, _ = self.ctx.extract_features(
                    self.text_branch_images, self.eval_train_set, desc="ReCLIP-T features"
                )
        self.model.train(was_training)
        opts = self.options
        # the sparse solver and the SVD run in float32 even when the step runs under mixed precision
        with torch.no_grad(), full_precision(self.initial_text):
            current_text = self.ensemble_text_features()
            branches = {}
            for branch, features, seeds in (
                ("vision", vision_features, self.initial_text),
                ("text", self.frozen_train_features, current_text),
            ):
                scores = propagate_labels(
                    features[valid].to(self.device),
                    seeds,
                    opts.lp_neighbors,
                    opts.lp_alpha,
                    opts.lp_solver,
                    opts.lp_iterations,
                    projection=class_agnostic_projection(seeds, opts.projection_drop, opts.projection_max_dim),
                )
                labels = torch.full((len(valid),), -1, dtype=torch.long)
                labels[valid] = scores.argmax(dim=1).cpu()
                branches[branch] = labels
        self.labels_vision, self.labels_text = branches["vision"], branches["text"]
        self.centroids = class_centroids(
            vision_features[valid].to(self.device), self.labels_vision[valid].to(self.device), self.centroids
        )
        agree = ((self.labels_vision == self.labels_text) & valid).float().sum() / valid.sum().clamp_min(1)
        # logged under the step being taken, as the engine logs a step, so that a resumed run rewrites it
        self.ctx.log({"step": step + 1, "reclip/label_agreement": agree.item()})

    def training_step(self, batch: dict, step: int) -> StepResult:
        round_index = step // (self.options.refresh_every or self.ctx.steps_per_epoch)
        if round_index != self.refreshed_round:
            self.refresh_pseudo_labels(step)
            self.refreshed_round = round_index
        index = batch["index"].cpu()
        labels_vision = self.labels_vision[index].to(self.device)
        labels_text = self.labels_text[index].to(self.device)
        agree = (labels_vision == labels_text) & (labels_vision >= 0)
        scale = self.logit_scale()
        vision_logits = scale * self.vision_branch_images(batch["image"]) @ self.centroids.t()
        with torch.no_grad():
            frozen_images = self.text_branch_images(batch["image"])
        text_logits = scale * frozen_images @ self.text_branch_classes().t()
        if bool(agree.any()):
            vision_loss = F.cross_entropy(vision_logits[agree], labels_vision[agree]) / self.vision_loss_divisor(
                len(index)
            )
            loss = vision_loss + F.cross_entropy(text_logits[agree], labels_text[agree])
        else:  # no agreed sample in this batch: a zero loss that still reaches the parameters
            loss = 0.0 * (vision_logits.sum() + text_logits.sum())
        metrics = {"loss": loss.item(), "agreement": agree.float().mean().item()}
        return StepResult(loss, metrics, pseudo_labels=labels_vision)

    def vision_loss_divisor(self, local_batch: int) -> int:
        """The batch size ReCLIP-V's loss is divided by (1 with `vision_loss_over_batch` off).

        The authors' code takes the mean over the whole batch of the agreed samples' cross-entropies (zero
        elsewhere) and then divides it by the number of agreed samples: the mean over the agreed samples, divided
        once more by the batch size. ReCLIP-T's loss is that mean alone, so the vision LayerNorms get 1/B of the
        gradient the mean gives (B = 64), their weight decay unchanged. The global batch: processes change nothing.
        """
        return local_batch * distributed.world_size() if self.options.vision_loss_over_batch else 1

    # --- inference: the mean of the two branches' cosines ---------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.vision_branch_images(images), self.text_branch_images(images)], dim=-1)
        return both / 2**0.5

    def classifier(self) -> torch.Tensor:
        with torch.no_grad():
            both = torch.cat([self.centroids.to(self.device), self.text_branch_classes()], dim=-1)
        return both / 2**0.5

    def state_dict(self) -> dict:
        return {
            "vision_norms": {k: v.detach().cpu().clone() for k, v in self.vision_norms.items()},
            "initial_text": self.initial_text.cpu().clone(),
            "centroids": self.centroids.cpu().clone(),
            "labels_vision": self.labels_vision,
            "labels_text": self.labels_text,
            "refreshed_round": self.refreshed_round,
        }

    def load_state_dict(self, state: dict) -> None:
        self.vision_norms = {k: v.to(self.device) for k, v in state["vision_norms"].items()}
        self.initial_text = state["initial_text"].to(self.device)
        self.centroids = state["centroids"].to(self.device)
        self.labels_vision = state["labels_vision"]
        self.labels_text = state["labels_text"]
        self.refreshed_round = state["refreshed_round"]
