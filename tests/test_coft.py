"""CoFT and CoFT+: the closed-form pieces, the phases' gradients, and runs through the CLI with resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from latteclip.cli import main
from latteclip.config import resolve_config
from latteclip.data import DatasetOptions, build_dataset, collate
from latteclip.describe.store import DescriptionStore, image_key
from latteclip.engine.checkpoint import load_checkpoint
from latteclip.engine.features import extract_features
from latteclip.engine.session import method_from_checkpoint, open_session
from latteclip.engine.trainer import build_optimizer, scaled_groups
from latteclip.errors import LatteclipError
from latteclip.methods.base import TrainContext
from latteclip.methods.coft import (
    CoftPlus,
    clean_probability,
    ema_update,
    load_class_descriptions,
    momentum_contrastive_loss,
    random_other_classes,
)
from latteclip.models import TokenCache, class_text_features, encode_texts, load_clip
from latteclip.models.adapter import FeatureAdapter
from latteclip.models.prompt_learner import PromptLearner

CPU = torch.device("cpu")


# --- closed-form pieces ----------------------------------------------------------------------------------
def test_clean_probability_on_hand_computed_values():
    """Sample 0: cos(v, t+) = 1, cos(v, t-) = 0, s = 2 -> e^2 / (e^2 + 1); sample 1 the reverse -> 1 / (1 + e^2)."""
    v = torch.tensor([[3.0, 0.0], [1.0, 0.0]])  # any norm: the cosines are taken
    positive = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    negative = torch.tensor([[0.0, 2.0], [4.0, 0.0]])
    p = clean_probability(v, positive, negative, torch.tensor([0, 1]), 2.0)
    assert torch.allclose(p, torch.tensor([math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.exp(2))]))
    assert bool(p[0] > 0.5) and bool(p[1] < 0.5)


def test_ema_update_moves_toward_the_online_weights_and_copies_buffers():
    target, online = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        target.weight.fill_(1.0)
        online.weight.fill_(3.0)
        online.running_mean.fill_(7.0)
    ema_update(target, online, momentum=0.9)
    assert torch.allclose(target.weight, torch.full((2,), 1.2))  # 0.9 * 1 + 0.1 * 3
    assert torch.equal(target.running_mean, torch.full((2,), 7.0))
    assert torch.equal(online.weight, torch.full((2,), 3.0))


def test_momentum_contrastive_loss_on_hand_computed_values():
    query = torch.tensor([[2.0, 0.0]])
    # one positive (logits 1 and 0 at T = 1): log(1 + e^-1)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = momentum_contrastive_loss(query, torch.tensor([0]), keys, torch.tensor([0, 1]), temperature=1.0)
    assert math.isclose(loss.item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    # two positives with logit 1, one negative with logit 0: log(2 + e^-1)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss = momentum_contrastive_loss(query, torch.tensor([0]), keys, torch.tensor([0, 1, 0]), temperature=1.0)
    assert math.isclose(loss.item(), math.log(2 + math.exp(-1)), rel_tol=1e-6)


def test_random_other_classes_avoid_the_label_and_repeat_per_seed():
    labels = torch.arange(5).repeat(200)
    drawn = random_other_classes(labels, 5, torch.Generator().manual_seed(3))
    assert not bool((drawn == labels).any())
    assert set(drawn.tolist()) == set(range(5))
    assert torch.equal(drawn, random_other_classes(labels, 5, torch.Generator().manual_seed(3)))


def test_adapter_starts_as_the_identity():
    features = torch.randn(4, 16)
    assert torch.equal(FeatureAdapter(16, reduction=4, seed=0)(features), features)


def test_prompt_learner_starts_at_the_template_and_trains_only_its_context():
    loaded = load_clip("latte-tiny", "random")
    model = loaded.model.requires_grad_(False)
    names = ["forest", "river", "lake or sea"]
    learner = PromptLearner(model, loaded.tokenizer, names, "a centered satellite photo of", ".")
    assert learner.n_context == 5
    expected = encode_texts(model, TokenCache(loaded.tokenizer), [f"a centered satellite photo of {n}." for n in names])
    assert torch.allclose(learner.features(model), expected, atol=1e-5)
    learner.features(model).sum().backward()
    assert learner.context.grad is not None and bool(learner.context.grad.abs().sum() > 0)
    assert all(p.grad is None for p in model.parameters())


def test_class_descriptions_file(tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps({"forest": ["dense trees", "dense trees", " "], "SeaLake": ["open water"]}))
    texts = load_class_descriptions(str(path), ["forest", "lake or sea"], ["Forest", "SeaLake"])
    assert texts == {0: ["dense trees"], 1: ["open water"]}  # by prompt or folder name, deduplicated
    path.write_text(json.dumps({"desert": ["sand"]}))
    with pytest.raises(LatteclipError, match="desert"):
        load_class_descriptions(str(path), ["forest"], ["Forest"])
    path.write_text("{not json")
    with pytest.raises(LatteclipError, match="not valid JSON"):
        load_class_descriptions(str(path), ["forest"], ["Forest"])


# --- the two phases train what they should -------------------------------------------------------------
def coft_session(root: str, **options):
    config = resolve_config({
        "method": "coft", "dataset": "eurosat", "root": root, "model": "latte-tiny", "pretrained": "random",
        "limit": 20, "device": "cpu", "workers": 0, "lr": 1e-3, "method_options": options,
    })
    return config, open_session(config)


def test_coft_starts_as_zero_shot_clip(eurosat_zip):
    _, session = coft_session(str(eurosat_zip.parent))
    method = session.method
    zero_shot = class_text_features(method.model, method.tokens, method.info.classnames, method.info.templates[:1])
    assert torch.allclose(method.classifier(), zero_shot, atol=1e-5)
    images = collate([session.dataset("test")[i] for i in range(4)])["image"]
    with torch.no_grad():
        assert torch.allclose(method.encode_images(images), torch.nn.functional.normalize(method.model.encode_image(images), dim=-1), atol=1e-6)


def test_phase_one_trains_prompts_and_adapter_phase_two_only_the_image_encoder(eurosat_zip, tmp_path):
    config, session = coft_session(str(eurosat_zip.parent), phase1_steps=1, clean_warmup_steps=1)
    method = session.method
    train_set = session.dataset("train", train_time=True)
    method.setup_training(TrainContext(
        train_set, None, tmp_path, 0,
        extract_features=lambda encode, dataset, desc="": extract_features(encode, dataset, CPU, 64, 0),
    ))
    optimizer = build_optimizer(scaled_groups(method.parameters()), config)
    # encoder at the base rate, prompts and adapter at peft_lr_scale (100) times it; each split by weight decay
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 0.1, 0.1])
    batch = collate([train_set[i] for i in range(8)])

    def snapshot() -> dict[str, torch.Tensor]:
        return {
            "encoder": torch.cat([p.detach().flatten() for p in method.model.visual.parameters()]).clone(),
            "text tower": torch.cat([p.detach().flatten() for p in method.model.transformer.parameters()]).clone(),
            "context": torch.cat([method.positive.context.detach().flatten(), method.negative.context.detach().flatten()]).clone(),
            "adapter": torch.cat([p.detach().flatten() for p in method.adapter.parameters()]).clone(),
        }

    def train_step(step: int) -> set[str]:
        before = snapshot()
        optimizer.zero_grad(set_to_none=True)
        method.training_step(batch, step).loss.backward()
        optimizer.step()
        after = snapshot()
        return {name for name in before if not torch.equal(before[name], after[name])}

    assert train_step(0) == {"context", "adapter"}
    assert train_step(1) == {"encoder"}


# --- runs through the command line ----------------------------------------------------------------------
def train_args(root: str, out, method: str, name: str, *extra: str) -> list[str]:
    return [
        "train", "--method", method, "--dataset", "eurosat", "--root", root, "--model", "latte-tiny",
        "--pretrained", "random", "--limit", "40", "--batch-size", "8", "--workers", "0", "--device", "cpu",
        "--eval-every", "0", "--log-every", "1", "--checkpoint-every", "1", "--lr", "1e-3",
        "--output", str(out), "--name", name, *extra,
    ]


def assert_eval_reproduces(run) -> None:
    """`latteclip eval` on final.pt rebuilds the trained classifier and gets the training run's numbers."""
    payload = load_checkpoint(run / "final.pt")
    rebuilt = method_from_checkpoint(payload, CPU)
    assert torch.allclose(rebuilt.classifier(), payload["classifier"], atol=1e-6)
    assert main(["eval", "--checkpoint", str(run / "final.pt"), "--device", "cpu"]) == 0
    results = json.loads((run / "results.json").read_text())
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["top1"] == results["top1"]
    assert evaluated["confusion"] == results["test"]["confusion"]


def test_coft_runs_both_phases_and_eval_matches(eurosat_zip, tmp_path):
    args = train_args(str(eurosat_zip.parent), tmp_path, "coft", "run", "--max-steps", "4", "--phase1-steps", "2", "--clean-warmup-steps", "1")
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records if "phase" in r] == [1.0, 1.0, 2.0, 2.0]
    assert [r["step"] for r in records if "coft/model1_clean" in r] == [3]  # model 1 judged once, at the switch
    assert_eval_reproduces(tmp_path / "run")


def test_coft_plus_needs_class_descriptions(eurosat_zip, tmp_path):
    assert main(train_args(str(eurosat_zip.parent), tmp_path, "coft_plus", "run", "--max-steps", "2")) == 2


def fill_store(root: str, path) -> None:
    """Kind 'class' descriptions for the first images of the limited training split."""
    train = build_dataset("eurosat", root, "train", None, DatasetOptions(limit=40, seed=0))
    store = DescriptionStore(path)
    for index in range(0, 40, 3):
        store.put(image_key(train.read_bytes(index)), "class", "describe the class", "test", "none", f"land seen from orbit, kind {index % 4}")
    store.close()


def test_coft_plus_rounds_resume_to_the_same_result(eurosat_zip, tmp_path, monkeypatch):
    root = str(eurosat_zip.parent)
    store = tmp_path / "store.sqlite"
    fill_store(root, store)
    extra = ["--max-steps", "7", "--round-steps", "3", "--phase1-steps", "1", "--clean-warmup-steps", "1", "--queue-size", "12", "--store", str(store)]
    assert main(train_args(root, tmp_path, "coft_plus", "straight", *extra)) == 0
    straight = tmp_path / "straight"
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "coft/round" in r] == [1, 4, 7]  # pseudo-labels refreshed at steps 0, 3, 6
    assert [r["phase"] for r in records if "phase" in r] == [1.0, 2.0, 2.0, 1.0, 2.0, 2.0, 1.0]
    assert_eval_reproduces(straight)

    original = CoftPlus.training_step

    def interrupted(self, batch, step):
        if step == 4:  # killed inside round 1, before model 1 judged the training set for its phase 2
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(CoftPlus, "training_step", interrupted)
    assert main(train_args(root, tmp_path, "coft_plus", "resumed", *extra)) == 130
    monkeypatch.setattr(CoftPlus, "training_step", original)
    assert main(train_args(root, tmp_path, "coft_plus", "resumed", *extra, "--resume")) == 0

    a, b = load_checkpoint(straight / "final.pt"), load_checkpoint(tmp_path / "resumed" / "final.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    for key in ("queue_keys", "descriptions", "pseudo_labels", "verdict_clean"):
        assert torch.allclose(a["method_state"][key].float(), b["method_state"][key].float(), atol=1e-6), key
    assert a["method_state"]["queue_position"] == b["method_state"]["queue_position"]
    for key in a["method_state"]["key_encoder"]:
        assert torch.allclose(a["method_state"]["key_encoder"][key], b["method_state"]["key_encoder"][key], atol=1e-6), key
    assert json.loads((straight / "results.json").read_text())["test"] == json.loads((tmp_path / "resumed" / "results.json").read_text())["test"]
