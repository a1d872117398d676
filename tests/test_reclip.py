"""ReCLIP: label propagation, the class-agnostic projection, centroids, and a run through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from latteclip.cli import main
from latteclip.engine.checkpoint import load_checkpoint
from latteclip.engine.session import method_from_checkpoint
from latteclip.methods.reclip import Reclip, class_agnostic_projection, class_centroids, knn_affinity, propagate_labels
from tests.conftest import interrupt_at_step, tiny_run_argv


@pytest.mark.parametrize("solver", ["closed_form", "iterative"])
def test_label_propagation_on_a_three_node_graph(solver):
    """Seeds at angles 0 and 180 degrees, one image at 60 degrees: solved by hand.

    Affinities (cos + 1) / 2: seed0-image 0.75, seed1-image 0.25, seed0-seed1 0. Degrees 0.75,
    0.25, 1, so S(seed0, image) = sqrt(0.75) and S(seed1, image) = 0.5. With alpha = 0.5,
    a = alpha sqrt(0.75) = sqrt(3)/4 and b = 0.25, (I - alpha S) F = Y gives for the image
    F = (a, b) / (1 - a^2 - b^2) = (1/sqrt(3), 1/3).
    """
    seeds = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    image = torch.tensor([[0.5, math.sqrt(3) / 2]])
    scores = propagate_labels(image, seeds, k=2, alpha=0.5, solver=solver, iterations=10)
    assert torch.allclose(scores, torch.tensor([[1 / math.sqrt(3), 1 / 3]]), atol=1e-5)


def test_knn_affinity_is_symmetric_normalised_and_keeps_k_neighbours():
    points = torch.nn.functional.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    graph = knn_affinity(points, k=3).to_dense()
    assert torch.allclose(graph, graph.t())
    assert torch.all(graph.diagonal() == 0)
    assert torch.all((graph > 0).sum(dim=1) >= 3)  # its own 3 neighbours, plus those that chose it


def test_iterative_solver_matches_the_closed_form_and_separates_clusters():
    """Three tight clusters around three class directions: every image takes its cluster's class."""
    generator = torch.Generator().manual_seed(1)
    directions = torch.eye(3, 6)
    truth = torch.arange(3).repeat_interleave(20)
    images = directions[truth] + 0.15 * torch.randn(60, 6, generator=generator)
    closed = propagate_labels(images, directions, k=5, alpha=0.9, solver="closed_form")
    iterative = propagate_labels(images, directions, k=5, alpha=0.9, solver="iterative", iterations=200, tol=1e-10)
    assert torch.allclose(closed, iterative, atol=1e-4)
    assert torch.equal(closed.argmax(dim=1), truth)


def test_projection_removes_the_direction_all_class_texts_share():
    """t_c = 2 e0 + u_c with u_c three unit vectors at 120 degrees in span(e1, e2), in 6 dimensions.

    The u_c sum to zero, so e0 is a singular direction of the texts (singular value^2 = 3 * 4 = 12,
    against 1.5 for the class-specific plane): the projection must send e0 to zero, keep the
    plane of class differences, and drop the directions no text spans (e3..e5).
    """
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    texts = torch.zeros(3, 6)
    texts[:, 0] = 2.0
    texts[:, 1], texts[:, 2] = torch.cos(angles), torch.sin(angles)
    projection = class_agnostic_projection(texts, drop=1)
    eye = torch.eye(6)
    assert torch.allclose(projection @ eye[0], torch.zeros(6), atol=1e-6)
    assert torch.allclose(projection @ eye[1], eye[1], atol=1e-6)
    assert torch.allclose(projection @ eye[2], eye[2], atol=1e-6)
    assert torch.allclose(projection @ eye[3:].t(), torch.zeros(6, 3), atol=1e-6)
    assert torch.allclose(projection @ projection, projection, atol=1e-6)
    # drop=0 keeps the shared direction: only the span of the texts remains
    assert torch.allclose(class_agnostic_projection(texts, drop=0) @ eye[0], eye[0], atol=1e-6)


def test_class_centroids_average_members_and_keep_empty_classes():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    previous = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    centroids = class_centroids(features, torch.tensor([0, 0, 1]), previous)
    assert torch.allclose(centroids[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.allclose(centroids[1], torch.tensor([1.0, 0.0]))
    assert torch.allclose(centroids[2], previous[2])


def train_args(root: str, out, name: str, *extra: str) -> list[str]:
    schedule = {"max_steps": 4, "batch_size": 8, "eval_every": 0, "refresh_every": 2, "lp_neighbors": 5}
    return tiny_run_argv("reclip", out, name, *extra, root=root, **schedule, lr="1e-3", checkpoint_every=1)


def test_reclip_trains_and_eval_rebuilds_the_same_classifier(eurosat_zip, tmp_path):
    assert main(train_args(str(eurosat_zip.parent), tmp_path, "run")) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reclip/label_agreement" in r] == [1, 3]  # refreshed at steps 0 and 2
    payload = load_checkpoint(run / "final.pt")
    state = payload["method_state"]
    assert state["labels_vision"].shape == state["labels_text"].shape == (40,)
    # the vision branch moved its LayerNorms; the text branch still sees the image tower's original ones
    moved = [
        name
        for name, value in state["vision_norms"].items()
        if not torch.equal(value, payload["model"][f"visual.{name}"])
    ]
    assert moved
    rebuilt = method_from_checkpoint(payload, torch.device("cpu"))
    assert torch.allclose(rebuilt.classifier(), payload["classifier"], atol=1e-6)
    assert main(["eval", "--checkpoint", str(run / "final.pt"), "--device", "cpu"]) == 0
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["top1"] == results["top1"]
    assert evaluated["confusion"] == results["test"]["confusion"]


def test_reclip_authors_schedule_sgd_and_one_refresh_per_epoch(eurosat_zip, tmp_path):
    from latteclip.config import resolve_config
    from latteclip.engine.optim import optimizer_for_run, scaled_groups

    assert [Reclip.default_epochs(n) for n in (40, 18900, 1_000_000)] == [2, 5, 100]  # min(100, N / 5000 + 2)
    norms = [torch.nn.Parameter(torch.ones(3))]
    optimizer = optimizer_for_run(scaled_groups(norms), resolve_config({"method": "reclip", "dataset": "eurosat"}))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9 and optimizer.param_groups[0]["weight_decay"] == 1e-4
    args = [a for a in train_args(str(eurosat_zip.parent), tmp_path, "authors") if a not in ("--max-steps", "4")]
    refresh = args.index("--refresh-every")
    del args[refresh : refresh + 2]  # the default: once per epoch
    assert main(args) == 0
    results = json.loads((tmp_path / "authors" / "results.json").read_text())
    # a constant learning rate: no warm-up (the dataset file's 40 steps would give 1 here), no cosine decay
    assert results["schedule"] == {"total_steps": 10, "warmup_steps": 0, "steps_per_epoch": 5, "epochs": 2}
    records = [json.loads(line) for line in (tmp_path / "authors" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reclip/label_agreement" in r] == [1, 6]  # at the start of each epoch
    lr = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert lr[1] == lr[10] == 1e-3  # the cosine schedule would end near 0 at step 10


def reclip_method(eurosat_zip, **options) -> Reclip:
    from latteclip.data import DatasetOptions, build_dataset
    from latteclip.data.transforms import eval_transform
    from latteclip.methods.options import ReclipOptions
    from latteclip.models import load_clip

    loaded = load_clip("latte-tiny", "random")
    transform = eval_transform(loaded.image_size, loaded.mean, loaded.std)
    train = build_dataset("eurosat", eurosat_zip, "train", transform, DatasetOptions(limit=12))
    method = Reclip(loaded, train.info, ReclipOptions(**options), torch.device("cpu"))
    method.train_set = train
    return method


def test_vision_loss_is_divided_by_the_batch_size_as_in_the_authors_code(eurosat_zip):
    """The authors' ReCLIP-V loss, mean over the batch of the agreed samples' cross-entropies (zero elsewhere)
    divided by the agreed count, written here as they wrote it; ReCLIP-T's is the mean over the agreed samples."""
    import torch.nn.functional as F

    from latteclip.data import collate
    from latteclip.methods.base import TrainContext

    losses = {}
    for divided in (True, False):
        method = reclip_method(eurosat_zip, vision_loss_over_batch=divided)
        batch = collate([method.train_set[i] for i in range(8)])
        method.ctx = TrainContext(method.train_set, None, None, 0, steps_per_epoch=100)
        method.refreshed_round = 0  # labels set by hand: no propagation in this step
        method.labels_vision = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
        method.labels_text = torch.tensor([0, 1, 2, 3, 9, 9, 6, 9, 8, 9, 0, 1])  # 5 of the batch's 8 agree
        with torch.no_grad():
            result = method.training_step(batch, 0)
            scale = method.logit_scale()
            v_logits = scale * method.vision_branch_images(batch["image"]) @ method.centroids.t()
            t_logits = scale * method.text_branch_images(batch["image"]) @ method.text_branch_classes().t()
        agree = (method.labels_vision[:8] == method.labels_text[:8]).float()
        v_each = F.cross_entropy(v_logits, method.labels_vision[:8], reduction="none")
        t_each = F.cross_entropy(t_logits, method.labels_text[:8], reduction="none")
        t_loss = torch.sum(t_each * agree) / torch.sum(agree)
        v_authors = torch.mean(v_each * agree) / torch.sum(agree)
        v_loss = v_authors if divided else torch.sum(v_each * agree) / torch.sum(agree)
        assert result.loss.item() == pytest.approx((v_loss + t_loss).item(), rel=1e-5)
        losses[divided] = result.loss.item()
    assert losses[True] < losses[False]


def test_propagation_and_projection_use_clips_templates_of_the_dataset(eurosat_zip):
    from latteclip.data.coop import load_spec
    from latteclip.models import class_text_features

    clip_templates = load_spec("eurosat")["templates"]
    assert len(clip_templates) > 1 and "a centered satellite photo of {}." in clip_templates
    method = reclip_method(eurosat_zip)
    assert method.info.templates == ["a photo of a {}."]  # the run's own (LatteCLIP's) template
    assert method.propagation_templates() == clip_templates
    want = class_text_features(method.model, method.tokens, method.info.classnames, clip_templates, method.device)
    assert torch.equal(method.initial_text, want)
    previous = reclip_method(eurosat_zip, lp_templates="run")
    assert previous.propagation_templates() == ["a photo of a {}."]
    assert not torch.allclose(previous.initial_text, method.initial_text, atol=1e-3)


def test_reclip_resumes_to_the_same_result(eurosat_zip, tmp_path, monkeypatch):
    root = str(eurosat_zip.parent)
    assert main(train_args(root, tmp_path, "straight")) == 0
    # killed after the second refresh, so the resumed run must reload both branches' labels
    undo = interrupt_at_step(monkeypatch, Reclip, 3)
    assert main(train_args(root, tmp_path, "resumed")) == 130
    undo()
    assert main(train_args(root, tmp_path, "resumed", "--resume")) == 0
    a, b = load_checkpoint(tmp_path / "straight" / "final.pt"), load_checkpoint(tmp_path / "resumed" / "final.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    assert torch.allclose(a["method_state"]["centroids"], b["method_state"]["centroids"], atol=1e-6)
    assert torch.equal(a["method_state"]["labels_text"], b["method_state"]["labels_text"])
    assert (
        json.loads((tmp_path / "straight" / "results.json").read_text())["test"]
        == json.loads((tmp_path / "resumed" / "results.json").read_text())["test"]
    )


def test_refreshes_reuse_one_loader_whose_worker_outlives_each_pass(eurosat_zip, tmp_path, monkeypatch):
    """Four refreshes of the training split with one worker: one loader of that split is built (before: one per
    refresh, each forking its worker again), its worker persists between passes, and none is left after the run."""
    import multiprocessing

    from latteclip.engine import features

    built: list[tuple[str, bool]] = []

    class CountedLoader(torch.utils.data.DataLoader):
        def __init__(self, dataset, **kwargs):
            super().__init__(dataset, **kwargs)
            built.append((dataset.split, self.persistent_workers))

    monkeypatch.setattr(features, "DataLoader", CountedLoader)
    args = train_args(str(eurosat_zip.parent), tmp_path, "run", "--workers", "1", "--refresh-every", "1")
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reclip/label_agreement" in r] == [1, 2, 3, 4]
    assert built.count(("train", True)) == 1 and ("train", False) not in built
    assert built.count(("test", False)) == 1  # the final evaluation: one pass, nothing to keep
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_compiled_reclip_compiles_in_its_first_step_only(eurosat_zip, tmp_path, monkeypatch):
    """--compile: the image tower gets one graph per (eval/train mode, own/pre-training LayerNorms through
    `functional_call`) and the text transformer one per (eval, train without and with gradients): 7 graphs, all made
    by the step-0 evaluation and the first step. Later steps, refreshes and evaluations must reuse them (dynamo raises
    on any recompile from step 1 on), with no graph break, and far from the recompile limit past which dynamo would
    run the towers eagerly without a word (it raises instead here)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    first_step = Reclip.training_step
    graphs_after_step_zero: list[int] = []

    def warmed_up_after_step_zero(self, batch, step):
        if step == 1:
            graphs_after_step_zero.append(counters["stats"]["unique_graphs"])
            monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        return first_step(self, batch, step)

    monkeypatch.setattr(Reclip, "training_step", warmed_up_after_step_zero)
    args = train_args(str(eurosat_zip.parent), tmp_path, "run", "--compile", "--max-steps", "6", "--eval-every", "3")
    try:
        assert main(args) == 0
        assert graphs_after_step_zero == [7]
        assert counters["stats"]["unique_graphs"] == 7
        assert counters["frames"]["ok"] == counters["frames"]["total"] == 7
        assert not counters["graph_break"]
    finally:
        torch._dynamo.reset()  # the compiled towers of this run's model are not kept for later tests
