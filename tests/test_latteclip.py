"""LatteCLIP's equations one by one (hand-computed values), the fast step against the reference
step, each ablation switch, and a real EuroSAT run whose checkpoint reproduces its accuracy."""

from __future__ import annotations

import json
import math
import shutil
from typing import ClassVar
from unittest.mock import ANY

import pytest
import torch
import torch.nn.functional as F

from latteclip.cli import main
from latteclip.data import DatasetOptions, build_dataset, collate
from latteclip.data.transforms import eval_transform
from latteclip.describe.groups import draw_pseudo_label_groups
from latteclip.describe.jobs import group_variant
from latteclip.describe.store import DescriptionStore, image_key
from latteclip.engine.checkpoint import load_checkpoint
from latteclip.engine.session import method_from_checkpoint
from latteclip.methods.base import TrainContext
from latteclip.methods.latteclip import LatteCLIP, LatteCLIPOptions, mixer_weights, prototype_text_embedding
from latteclip.models import PrototypeBank, load_clip
from latteclip.models.losses import contrastive_loss

EPS = 1e-6
P = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


# --- Eq. (1) ----------------------------------------------------------------------------------------
def test_mixer_weight_is_top1_minus_top2_cosine_for_any_norm():
    texts = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    # cosines to P: [1, 0, -1] -> 1; [0.6, 0.8, -0.6] -> 0.2; [.707, .707, -.707] -> tie -> 0
    expected = torch.tensor([1.0, 0.2, 0.0])
    assert torch.allclose(mixer_weights(texts, P), expected, atol=1e-6)
    assert torch.allclose(mixer_weights(texts * 7, P * 0.1), expected, atol=1e-6)


def test_mixer_weights_carry_no_gradient():
    texts = torch.tensor([[3.0, 4.0]], requires_grad=True)
    assert not mixer_weights(texts, P).requires_grad


# --- Eq. (2) ----------------------------------------------------------------------------------------
def test_prototype_text_embedding_by_hand():
    texts = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])  # weights 1 and 0.2
    label_proto = torch.tensor([[0.0, 1.0]])
    w1, w2 = 1.0 + EPS, 0.2 + EPS
    mix = [(w1 * 1.0 + w2 * 0.6) / (w1 + w2), (w2 * 0.8) / (w1 + w2)]
    expected = torch.tensor([[0.5 * mix[0], 0.5 * mix[1] + 0.5]])
    got = prototype_text_embedding(texts, label_proto, P, alpha=0.5)
    assert torch.allclose(got, expected, atol=1e-6)


def test_prototype_text_embedding_ties_fall_back_to_the_mean():
    r = 1 / math.sqrt(2)
    texts = torch.tensor([[[r, r], [-r, r]]])  # both texts tie between two prototypes: weight 0
    got = prototype_text_embedding(texts, torch.tensor([[1.0, 0.0]]), P, alpha=0.25)
    expected = 0.75 * torch.tensor([[0.0, r]]) + 0.25 * torch.tensor([[1.0, 0.0]])
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected, atol=1e-5)


def test_prototype_text_embedding_without_mixer_is_the_plain_mean():
    texts = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    got = prototype_text_embedding(texts, torch.tensor([[0.0, 1.0]]), P, alpha=0.5, use_mixer=False)
    assert torch.allclose(got, torch.tensor([[0.5 * 0.8, 0.5 * 0.4 + 0.5]]), atol=1e-6)


def test_gradient_flows_to_texts_only_with_weight_one_minus_alpha():
    texts = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]], requires_grad=True)
    t = prototype_text_embedding(texts, torch.tensor([[0.0, 1.0]]), P, alpha=0.9, use_mixer=False)
    t.sum().backward()
    assert torch.allclose(texts.grad, torch.full_like(texts, 0.1 / 2))


# --- prototype update (step 7) ----------------------------------------------------------------------
def test_update_with_mu_blends_then_renormalises_and_keeps_absent_classes():
    bank = PrototypeBank(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    bank.momentum_update(torch.tensor([[0.0, 2.0], [2.0, 4.0], [2.0, 0.0]]), torch.tensor([1, 1, 0]), mu=0.5)
    # class 1: 0.5 * mean (1, 3) + 0.5 * (0, 1) = (0.5, 2), unit length; class 0: (1.5, 0) -> (1, 0); class 2 absent
    want = torch.tensor([[1.0, 0.0], [0.5 / math.sqrt(4.25), 2.0 / math.sqrt(4.25)], [0.6, 0.8]])
    assert torch.allclose(bank.vectors, want, atol=1e-6)


def test_authors_rule_mu_zero_is_the_normalised_batch_mean():
    bank = PrototypeBank(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    bank.momentum_update(torch.tensor([[2.0, 2.0], [4.0, 0.0]]), torch.tensor([0, 0]), mu=0.0)
    assert torch.allclose(
        bank.vectors, torch.tensor([[3.0 / math.sqrt(10), 1.0 / math.sqrt(10)], [0.0, 1.0]]), atol=1e-6
    )
    assert torch.allclose(bank.vectors.norm(dim=-1), torch.ones(2))


def drift_after(steps: int, mu: float) -> float:
    """Cosine between a prototype and its start after `steps` real updates whose texts all point to an orthogonal
    direction."""
    start, text = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[[0.0, 1.0, 0.0]]])
    bank = PrototypeBank(start)
    for _ in range(steps):
        t = prototype_text_embedding(text, bank.vectors, bank.vectors, alpha=0.99)
        bank.momentum_update(t, torch.tensor([0]), mu)
    return float(bank.vectors[0] @ start[0])


def test_alpha_is_the_momentum_prototypes_reach_the_texts_within_hundreds_of_steps():
    # the authors' rule: about 1 % of the way per step; the literal double momentum: 0.01 %
    assert drift_after(300, mu=0.0) < 0.1  # cosine with the start: the prototype has turned to the texts
    assert drift_after(300, mu=0.99) > 0.99  # applied twice, the prototype has barely moved


def test_prototype_arithmetic_is_fp32_under_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    texts = F.normalize(torch.randn(8, 3, 16, generator=generator), dim=-1)
    prototypes = F.normalize(torch.randn(5, 16, generator=generator), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])

    def update() -> tuple[torch.Tensor, torch.Tensor]:
        t = prototype_text_embedding(texts, prototypes[labels], prototypes, alpha=0.99)
        bank = PrototypeBank(prototypes)
        bank.momentum_update(t, labels, mu=0.0)
        return t, bank.vectors

    t_fp32, p_fp32 = update()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t_amp, p_amp = update()
    assert t_amp.dtype == p_amp.dtype == torch.float32
    assert torch.allclose(t_amp, t_fp32, atol=1e-6) and torch.allclose(p_amp, p_fp32, atol=1e-6)
    # the same step in bf16 would lose it: the 1 % move is below bf16's resolution
    assert (t_fp32.bfloat16().float() - t_fp32).abs().max() > 1e-4


# --- the step on a real batch ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def eurosat_batch(tmp_path_factory):
    from tests.conftest import EUROSAT_ZIP

    loaded = load_clip("latte-tiny", "random")
    train = build_dataset(
        "eurosat",
        EUROSAT_ZIP,
        "train",
        eval_transform(loaded.image_size, loaded.mean, loaded.std),
        DatasetOptions(limit=20),
    )
    store_path = tmp_path_factory.mktemp("store") / "descriptions.sqlite"
    store = DescriptionStore(store_path)
    for i, sample in enumerate(train.samples):
        key = image_key(train.read_bytes(i))
        name = train.info.classnames[sample.label]
        store.put(key, "image", "p", "test", "m", f"a satellite tile of {name}, item {i % 5}")
        store.put(key, "group", "g", "test", "m", f"all tiles show {name.split()[0]}")
    store.close()
    zs = torch.arange(len(train)) % train.info.num_classes
    batch = collate([train[i] for i in range(12)])
    return loaded, train, store_path, zs, batch


def make_method(eurosat_batch, tmp_path, steps_per_epoch: int = 1, **options) -> LatteCLIP:
    loaded, train, store_path, zs, _ = eurosat_batch
    method = LatteCLIP(loaded, train.info, LatteCLIPOptions(**options), torch.device("cpu"))
    method.setup_training(TrainContext(train, zs, tmp_path, 0, str(store_path), steps_per_epoch=steps_per_epoch))
    return method


def expected_embeddings(
    method: LatteCLIP, batch: dict, ft_labels: torch.Tensor, step: int = 0, mixer_against: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (2) recomputed from scratch: full-length OpenCLIP text features (which group a visit reads: its own test);
    the mixer weighs against `mixer_against` (default: the bank), Eq. (2) blends with the bank."""
    model, tok = method.model, method.loaded.tokenizer
    opts = method.options
    prototypes = method.bank.vectors
    mixer_against = prototypes if mixer_against is None else mixer_against
    out, labels = [], []
    kinds = {"zs": method.zs_labels[batch["index"]], "ft": ft_labels}
    for kind, on in (("zs", opts.loss_zs), ("ft", opts.loss_ft)):
        if not on:
            continue
        rows = []
        for i, c in zip(batch["index"].tolist(), kinds[kind].tolist()):
            texts = [method.class_texts[c] if t == "class" else method.description(t, i, step) for t in opts.texts]
            e = F.normalize(model.encode_text(tok(texts)), dim=-1)
            w = mixer_weights(e, mixer_against) + EPS if opts.mixer else torch.ones(len(texts))
            mix = (w[:, None] * e).sum(0) / w.sum()
            rows.append((1 - opts.alpha) * mix + opts.alpha * prototypes[c])
        out.append(torch.stack(rows))
        labels.append(kinds[kind])
    return torch.cat(out), torch.cat(labels)


ABLATIONS = [
    {},
    {"texts": ["class"]},
    {"texts": ["image", "group"]},
    {"texts": ["class", "group"]},
    {"mixer": False},
    {"loss_zs": False},
    {"loss_ft": False},
    {"alpha": 0.5},
]


@pytest.mark.parametrize("options", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_each_switch_changes_exactly_what_it_names(eurosat_batch, tmp_path, options):
    method = make_method(eurosat_batch, tmp_path, **options)
    batch = eurosat_batch[4]
    result = method.training_step(batch, 0)
    want_t, want_labels = expected_embeddings(method, batch, result.pseudo_labels)
    assert torch.allclose(result.state["embeddings"], want_t.detach(), atol=1e-5)
    assert torch.equal(result.state["labels"], want_labels)
    u = F.normalize(method.model.encode_image(batch["image"]), dim=-1)
    b = len(batch["index"])
    parts = [
        contrastive_loss(u, F.normalize(want_t[j * b : (j + 1) * b], dim=-1), method.model.logit_scale)
        for j in range(len(want_t) // b)
    ]
    assert result.loss.item() == pytest.approx(sum(p.item() for p in parts), abs=1e-4)
    assert ("loss_zs" in result.metrics) == options.get("loss_zs", True)
    assert ("loss_ft" in result.metrics) == options.get("loss_ft", True)
    assert {k for k in result.metrics if k.startswith("mixer/")} == {
        f"mixer/weight_{t}" for t in options.get("texts", ["class", "image", "group"])
    }


@pytest.mark.parametrize("momentum,mu", [(True, 0.0), (True, 0.9), (False, 0.9)])
def test_momentum_switch(eurosat_batch, tmp_path, momentum, mu):
    method = make_method(eurosat_batch, tmp_path, momentum=momentum, mu=mu)
    before = method.bank.vectors.clone()
    batch = eurosat_batch[4]
    result = method.training_step(batch, 0)
    t, labels = expected_embeddings(method, batch, result.pseudo_labels)
    t = t.detach()
    method.after_optimizer_step(batch, result, 0)
    if not momentum:  # the prototype is replaced by the mixed texts alone: t without Eq. (2)'s blend with p_c
        t = (t - 0.99 * before[labels]) / 0.01
    mu = mu if momentum else 0.0
    for c in range(before.shape[0]):
        members = labels == c
        expected = F.normalize((1 - mu) * t[members].mean(0) + mu * before[c], dim=0) if members.any() else before[c]
        assert torch.allclose(method.bank.vectors[c], expected, atol=1e-5), c


def test_the_mixer_weighs_against_the_prototypes_of_the_epoch_start_by_default(eurosat_batch, tmp_path):
    """The authors' snapshot: within an epoch (here 2 steps) the mixer keeps the epoch's first prototypes while
    Eq. (2) blends with the live bank; the next epoch takes a new snapshot. alpha 0 lets one step move the bank."""
    batch = eurosat_batch[4]
    for mode in ("default", "current"):
        options = {} if mode == "default" else {"mixer_prototypes": "current"}
        method = make_method(eurosat_batch, tmp_path, steps_per_epoch=2, alpha=0.0, **options)
        start = method.bank.vectors.clone()
        for step in range(3):
            before = method.bank.vectors.clone()
            result = method.training_step(batch, step)
            snapshot = start if (mode == "default" and step < 2) else before
            want, _ = expected_embeddings(method, batch, result.pseudo_labels, step, mixer_against=snapshot)
            assert torch.allclose(result.state["embeddings"], want.detach(), atol=1e-5), (mode, step)
            if step == 1:  # the bank moved after step 0: the two readings differ here
                other = before if mode == "default" else start
                unlike, _ = expected_embeddings(method, batch, result.pseudo_labels, step, mixer_against=other)
                assert not torch.allclose(result.state["embeddings"], unlike.detach(), atol=1e-4), mode
            method.after_optimizer_step(batch, result, step)
        if mode == "default":
            assert torch.equal(method.state_dict()["epoch_prototypes"], before)  # the snapshot is method state
        else:
            assert "epoch_prototypes" not in method.state_dict()


def test_a_step_under_bf16_autocast_keeps_the_bank_and_embeddings_fp32(eurosat_batch, tmp_path):
    method = make_method(eurosat_batch, tmp_path)
    batch = eurosat_batch[4]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = method.training_step(batch, 0)
        method.after_optimizer_step(batch, result, 0)
    assert result.state["embeddings"].dtype == torch.float32 and method.bank.vectors.dtype == torch.float32
    assert torch.allclose(method.bank.vectors.norm(dim=-1), torch.ones(method.bank.num_classes), atol=1e-6)


def test_each_visit_reads_the_group_of_a_random_image_of_its_zero_shot_class(eurosat_batch, tmp_path):
    _, train, _, zs, _ = eurosat_batch
    method = make_method(eurosat_batch, tmp_path)
    own = make_method(eurosat_batch, tmp_path, group_text="own")
    group_text = {i: method.descriptions["group"][i] for i in range(len(train))}
    for i in range(len(train)):
        same_class = {group_text[j] for j in range(len(train)) if zs[j] == zs[i]}
        drawn = [method.description("group", i, step) for step in range(40)]
        assert set(drawn) <= same_class and len(set(drawn)) == len(same_class)  # 2 images per class here: both are read
        assert drawn == [
            method.description("group", i, step) for step in range(40)
        ]  # seeded: a resumed run reads the same
        assert {own.description("group", i, step) for step in range(40)} == {group_text[i]}


class HostReads(torch.Tensor):
    """Counts the reads that would copy a CUDA tensor to the host, each a device sync (`int(t[i])`, `.item()`, ...)."""

    reads: ClassVar[list[str]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("item", "tolist", "__int__", "__index__", "__bool__", "__float__", "cpu"):
            cls.reads.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_no_device_sync_per_sample(eurosat_batch, tmp_path):
    """The zero-shot labels live on the device: per-image lookups must not read them back one by one."""
    method = make_method(eurosat_batch, tmp_path, gallery_size=4)
    method.zs_labels = method.zs_labels.as_subclass(HostReads)  # as if on a GPU
    batch = eurosat_batch[4]
    reads = []
    for size in (4, 12):
        HostReads.reads.clear()
        method.training_step({k: v[:size] for k, v in batch.items()}, 0)
        reads.append(len(HostReads.reads))
    assert reads[0] == reads[1]  # a few per step (metrics), none per sample
    HostReads.reads.clear()
    method.finish_training()
    assert HostReads.reads == [] and (tmp_path / "gallery.json").is_file()


def test_fast_step_equals_reference_step_loss_and_gradients(eurosat_batch, tmp_path):
    method = make_method(eurosat_batch, tmp_path)
    batch = eurosat_batch[4]
    grads = {}
    for fast in (True, False):
        method.options.fast_text = fast
        method.model.zero_grad(set_to_none=True)
        result = method.training_step(batch, 0)
        result.loss.backward()
        grads[fast] = (
            result.loss.item(),
            {n: p.grad.clone() for n, p in method.model.named_parameters() if p.grad is not None},
        )
    (loss_fast, g_fast), (loss_ref, g_ref) = grads[True], grads[False]
    assert loss_fast == pytest.approx(loss_ref, abs=1e-5)
    assert g_fast.keys() == g_ref.keys() and "token_embedding.weight" in g_fast
    for name in g_fast:
        assert torch.allclose(g_fast[name], g_ref[name], atol=1e-5, rtol=1e-4), name


def test_bad_options_are_one_line_errors(eurosat_batch, tmp_path):
    from latteclip.errors import LatteclipError

    with pytest.raises(LatteclipError, match="subset"):
        make_method(eurosat_batch, tmp_path, texts=["class", "caption"])
    with pytest.raises(LatteclipError, match="at least one"):
        make_method(eurosat_batch, tmp_path, loss_zs=False, loss_ft=False)


# --- a real run ------------------------------------------------------------------------------------
def _fill_store(path, root, limit):
    train = build_dataset("eurosat", root, "train", None, DatasetOptions(limit=limit))
    store = DescriptionStore(path)
    for i, sample in enumerate(train.samples):
        key = image_key(train.read_bytes(i))
        if i % 10 == 9:
            continue  # leave some images undescribed
        store.put(key, "image", "p", "test", "m", f"a satellite tile of {train.info.classnames[sample.label]}")
        store.put(key, "group", "g", "test", "m", "tiles with fields and roads")
    store.close()
    return len(train)


def test_eurosat_run_trains_saves_prototypes_and_eval_reproduces(tmp_path, capsys):
    from tests.conftest import EUROSAT_ZIP, tiny_argv

    store = tmp_path / "d.sqlite"
    n = _fill_store(store, EUROSAT_ZIP, 60)
    schedule = {"batch_size": 16, "max_steps": 8, "eval_every": 4, "lr": "1e-4"}
    common = tiny_argv("train", method="latteclip", limit=60, device=None, **schedule, store=store, output=tmp_path)
    assert main([*common, "--name", "strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{n // 10} of {n} training images have no image description" in err and "\n" not in err
    assert main([*common, "--name", "run", "--missing-descriptions", "class"]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    payload = load_checkpoint(run / "final.pt")
    prototypes = payload["method_state"]["prototypes"]["vectors"]
    assert prototypes.shape == (10, 64)
    assert torch.allclose(payload["classifier"], F.normalize(prototypes, dim=-1))
    method = method_from_checkpoint(payload, torch.device("cpu"))
    assert torch.allclose(method.classifier(), F.normalize(prototypes, dim=-1))
    assert main(["eval", "--checkpoint", str(run / "final.pt")]) == 0
    assert json.loads((run / "eval.json").read_text())["top1"] == results["top1"]
    gallery = json.loads((run / "gallery.json").read_text())
    assert gallery and set(gallery[0]["weights"]) == {"class", "image", "group"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("mixer/weight_group" in r for r in records) and any("analysis/pl_agreement" in r for r in records)


def test_a_run_resumed_inside_an_epoch_equals_the_straight_run_bit_for_bit(tmp_path, monkeypatch):
    """Killed at step 5, inside the second epoch (3 steps each): the mixer's snapshot of step 3 must come back
    from last.pt, since the bank of step 5 would weigh the texts otherwise."""
    from tests.conftest import EUROSAT_ZIP, interrupt_at_step, tiny_argv

    store = tmp_path / "d.sqlite"
    _fill_store(store, EUROSAT_ZIP, 48)
    schedule = {"batch_size": 16, "max_steps": 7, "eval_every": 0, "checkpoint_every": 1, "lr": "1e-3"}
    options = {"missing_descriptions": "class", "alpha": 0.5}
    common = tiny_argv(
        "train", method="latteclip", limit=48, device=None, **schedule, store=store, output=tmp_path, **options
    )
    assert main([*common, "--name", "straight"]) == 0
    undo = interrupt_at_step(monkeypatch, LatteCLIP, 5)
    assert main([*common, "--name", "resumed"]) == 130
    assert "epoch_prototypes" in load_checkpoint(tmp_path / "resumed" / "last.pt")["method_state"]
    undo()
    assert main([*common, "--name", "resumed", "--resume"]) == 0
    a, b = load_checkpoint(tmp_path / "straight" / "final.pt"), load_checkpoint(tmp_path / "resumed" / "final.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["method_state"]["prototypes"]["vectors"], b["method_state"]["prototypes"]["vectors"])
    assert torch.equal(a["method_state"]["epoch_prototypes"], b["method_state"]["epoch_prototypes"])


def test_a_run_reads_the_description_set_of_its_seed_even_when_another_is_newer(eurosat_batch, tmp_path):
    loaded, train, fixture_store, _, _ = eurosat_batch
    zs = torch.zeros(len(train), dtype=torch.long)  # one label: each seed draws other groups from the 19 other images
    store_path = tmp_path / "descriptions.sqlite"
    shutil.copyfile(fixture_store, store_path)
    hashes = [image_key(train.read_bytes(i)) for i in range(len(train))]
    store = DescriptionStore(store_path)
    for seed, text in ((0, "this run's draw"), (1, "a later draw of seed 1")):  # the seed-1 set is the newest
        members = []
        for anchor, cells in enumerate(draw_pseudo_label_groups(zs.tolist(), 4, seed)):
            variant = group_variant([hashes[i] for i in cells])
            store.put(hashes[anchor], "group", "g", "test", "m", text, variant=variant, meta={"cells": [f"seed{seed}"]})
            members.append((hashes[anchor], "group", "g", "m", variant))
        store.record_set(train.info.name, {"describer": "test m", "group_size": 4, "seed": seed}, members)
    store.close()
    method = LatteCLIP(loaded, train.info, LatteCLIPOptions(), torch.device("cpu"))
    method.setup_training(TrainContext(train, zs, tmp_path, 0, str(store_path)))
    assert set(method.descriptions["group"]) == {"this run's draw"}
    assert method.group_members([0])[0] == ["seed0"]  # the gallery shows the same group
    # what was read is in the run folder: the group set's contract; the image texts, from rows written before sets
    read = json.loads((tmp_path / "descriptions.json").read_text())
    assert read["group"] == {"set": ANY, "describer": "test m", "group_size": 4, "seed": 0}
    assert read["image"]["set"] is None and "written by an earlier version" in read["image"]["note"]


@pytest.mark.parametrize("poisoned", [False, True])
def test_a_step_the_grad_scaler_skips_moves_neither_weights_nor_prototypes(eurosat_batch, tmp_path, poisoned):
    """fp16's loss scaling (a CPU GradScaler here): an inf in the gradients skips the update, and the prototypes'
    momentum update with it; a finite step moves both."""
    import copy

    from latteclip.config import RunConfig
    from latteclip.engine.train_state import TrainState

    loaded, *rest = eurosat_batch
    method = make_method((copy.deepcopy(loaded), *rest), tmp_path)  # this test's own weights: it changes them
    state = TrainState.create(method, RunConfig(lr=1e-3), torch.device("cpu"))
    state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    step = method.training_step

    def inf_loss(batch, i):
        result = step(batch, i)
        result.loss = result.loss * float("inf")
        return result

    if poisoned:
        method.training_step = inf_loss
    prototypes, weights = method.bank.vectors.clone(), method.model.visual.conv1.weight.detach().clone()
    state.optimisation_step(rest[-1], 0)
    assert state.scaler.get_scale() == (2.0**7 if poisoned else 2.0**8)
    assert torch.equal(method.bank.vectors, prototypes) == poisoned
    assert torch.equal(method.model.visual.conv1.weight, weights) == poisoned
