"""CoFT and CoFT+: the closed-form pieces, the two models' collaboration, the phases' gradients, and runs through the
CLI with resume."""

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
from latteclip.engine.optim import optimizer_for_run, scaled_groups
from latteclip.engine.session import method_from_checkpoint, open_session
from latteclip.errors import LatteclipError
from latteclip.methods.base import TrainContext
from latteclip.methods.coft import (
    NO,
    YES,
    CoftPlus,
    balanced_cross_entropy,
    clean_log_odds,
    clean_probability,
    collaborate,
    ema_update,
    load_class_descriptions,
    momentum_contrastive_loss,
    phase_schedule,
    prior_matching,
    random_other_classes,
    yes_no_loss,
)
from latteclip.models import TokenCache, class_text_features, encode_texts, load_clip
from latteclip.models.adapter import FeatureAdapter
from latteclip.models.prompt_learner import PromptLearner
from tests.conftest import TINY_MODEL, tiny_run_argv

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


def test_clean_log_odds_on_hand_computed_values():
    """log(p / (1 - p)) = s * (cos(v, t+_c) - cos(v, t-_c)) for each candidate c of each image."""
    v = torch.tensor([[2.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    negative = torch.tensor([[0.0, 1.0], [0.8, 0.6]])
    odds = clean_log_odds(v, positive, negative, torch.tensor([[0, 1, 1]]), 3.0)
    assert torch.allclose(odds, torch.tensor([[3.0, 3.0 * (0.6 - 0.8), 3.0 * (0.6 - 0.8)]]))
    p = clean_probability(v, positive, negative, torch.tensor([1]), 3.0)
    assert torch.allclose(odds[:, 1], (p / (1 - p)).log())


def test_collaboration_keeps_the_label_of_the_model_that_is_right():
    """Candidates per image: (round label, T's prediction, V's prediction); the two models' log-odds add.

    Image 0: T predicts class 0 (wrong), V predicts 2 (right). T doubts its own label a little
    (+0.5) and finds 2 plausible (+0.2); V rejects 0 (-2.0) and backs 2 (+1.5). Joint: 0 -> -1.5,
    2 -> +1.7: kept, with 2; 0 is rejected once although it is two of the candidates.
    Image 1: both agree on 1 and both back it: kept with 1, nothing rejected.
    Image 2: every candidate has a negative joint log-odds: not kept, both distinct candidates rejected.
    """
    candidates = torch.tensor([[0, 0, 2], [1, 1, 1], [0, 3, 0]])
    text_odds = torch.tensor([[0.5, 0.5, 0.2], [1.0, 1.0, 1.0], [-0.5, 0.3, -0.5]])
    vision_odds = torch.tensor([[-2.0, -2.0, 1.5], [0.5, 0.5, 0.5], [0.1, -1.0, 0.1]])
    label, kept, rejected = collaborate(candidates, text_odds, vision_odds)
    assert label.tolist() == [2, 1, 0]  # image 2: the best of the rejected candidates (-0.4 against -0.7)
    assert kept.tolist() == [True, True, False]
    assert rejected.tolist() == [[True, False, False], [False, False, False], [True, True, False]]


def test_collaboration_from_the_two_models_features():
    """The same decision from real cosines (s = 10): T (frozen features, its prompts) is wrong, V (its features, its
    class vectors) right.

    T sees the image at 0 degrees; its pairs: class 0 (yes 0, no 60 degrees), class 1 (yes 30, no 60).
    It predicts 0 (cos 1 against cos 30) with log-odds 10 (1 - cos 60) = 5, and gives class 1
    10 (cos 30 - cos 60) = 3.66. V sees the image at 90 degrees; its pairs: class 0 (yes 0, no 90),
    class 1 (yes 60, no 30). It predicts 1 with log-odds 10 (cos 30 - cos 60) = 3.66 and rejects 0 with -10.
    Joint: class 0 -> -5, class 1 -> 7.32: the image is kept with V's label, and "not 0" is trained.
    """

    def unit(*degrees: float) -> torch.Tensor:
        angle = torch.deg2rad(torch.tensor(degrees))
        return torch.stack([angle.cos(), angle.sin()], dim=1)

    scale = 10.0
    candidates = torch.tensor([[0, 0, 1]])  # (round label, T's prediction, V's prediction)
    text_odds = clean_log_odds(unit(0), unit(0, 30), unit(60, 60), candidates, scale)
    vision_odds = clean_log_odds(unit(90), unit(0, 60), unit(90, 30), candidates, scale)
    c30, c60 = math.cos(math.radians(30)), math.cos(math.radians(60))
    assert torch.allclose(text_odds, torch.tensor([[10 * (1 - c60), 10 * (1 - c60), 10 * (c30 - c60)]]), atol=1e-5)
    assert torch.allclose(vision_odds, torch.tensor([[-10.0, -10.0, 10 * (c30 - c60)]]), atol=1e-5)
    assert (unit(0) @ unit(0, 30).t()).argmax().item() == 0 and (unit(90) @ unit(0, 60).t()).argmax().item() == 1
    label, kept, rejected = collaborate(candidates, text_odds, vision_odds)
    assert label.tolist() == [1] and kept.tolist() == [True]
    assert rejected.tolist() == [[True, False, False]]


def test_balanced_cross_entropy_weighs_each_class_equally():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2  # class 0's mean, class 1's mean, averaged
    assert math.isclose(balanced_cross_entropy(logits, labels).item(), expected, rel_tol=1e-6)
    assert not math.isclose(
        balanced_cross_entropy(logits, labels).item(), torch.nn.functional.cross_entropy(logits, labels).item()
    )
    assert balanced_cross_entropy(logits[:0], labels[:0]).item() == 0.0


def test_prior_matching_is_zero_when_balanced_and_log_c_when_collapsed():
    spread = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 50.0]])
    assert prior_matching(spread).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.tensor([[50.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    assert prior_matching(collapsed).item() == pytest.approx(math.log(3), abs=1e-6)
    half = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # mean (1/2, 1/2) of two classes
    assert prior_matching(half).item() == pytest.approx(0.0, abs=1e-7)


def test_yes_and_no_losses_on_hand_computed_values():
    """cos(v, t+) = 1, cos(v, t-) = 0, s = 1: "yes" costs log(1 + e^-1), "no" log(1 + e)."""
    v = torch.tensor([[1.0, 0.0]])
    positive, negative = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    label = torch.tensor([0])
    assert math.isclose(
        yes_no_loss(v, positive, negative, label, YES, 1.0).item(), math.log(1 + math.exp(-1)), rel_tol=1e-6
    )
    assert math.isclose(
        yes_no_loss(v, positive, negative, label, NO, 1.0).item(), math.log(1 + math.exp(1)), rel_tol=1e-6
    )
    assert yes_no_loss(v[:0], positive, negative, label[:0], NO, 1.0).item() == 0.0


def test_phases_are_shares_of_the_step_budget():
    """Two rounds, phase 1 a quarter of each: the same options give the same shape at 80 and at 2000 steps."""

    def phases(total: int) -> list[tuple[int, int]]:
        return [phase_schedule(step, total, 2, 0.25) for step in range(total)]

    short = phases(80)
    assert short[0] == (0, 1) and short[9] == (0, 1) and short[10] == (0, 2) and short[39] == (0, 2)
    assert short[40] == (1, 1) and short[49] == (1, 1) and short[50] == (1, 2) and short[79] == (1, 2)
    long = phases(2000)
    assert long[249] == (0, 1) and long[250] == (0, 2) and long[1000] == (1, 1) and long[1250] == (1, 2)
    for schedule, total in ((short, 80), (long, 2000)):
        assert sum(phase == 1 for _, phase in schedule) == total // 4
    assert {p for _, p in (phase_schedule(s, 7, 1, 0.0) for s in range(7))} == {2}  # no phase 1 at all


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
    config = resolve_config(
        {
            "method": "coft",
            "dataset": "eurosat",
            "root": root,
            "limit": 20,
            **TINY_MODEL,
            "lr": 1e-3,
            "method_options": options,
        }
    )
    return config, open_session(config)


def test_coft_starts_as_zero_shot_clip(eurosat_zip):
    _, session = coft_session(str(eurosat_zip.parent))
    method = session.method
    zero_shot = class_text_features(method.model, method.tokens, method.info.classnames, method.info.templates[:1])
    assert torch.allclose(method.classifier(), zero_shot, atol=1e-5)
    images = collate([session.dataset("test")[i] for i in range(4)])["image"]
    with torch.no_grad():
        assert torch.allclose(
            method.encode_images(images),
            torch.nn.functional.normalize(method.model.encode_image(images), dim=-1),
            atol=1e-6,
        )


def test_phase_one_trains_the_light_parts_phase_two_also_the_image_encoder(eurosat_zip, tmp_path):
    """Phase 1: T's contexts, V's adapter and class vectors; phase 2 adds V's image encoder; the text tower never
    trains."""
    config, session = coft_session(str(eurosat_zip.parent), phase1_fraction=0.25, clean_warmup_fraction=0.25)
    method = session.method
    train_set = session.dataset("train", train_time=True)
    method.setup_training(
        TrainContext(
            train_set,
            None,
            tmp_path,
            0,
            total_steps=4,
            eval_transform=session.loaded.eval_transform(),
            extract_features=lambda encode, dataset, desc="": extract_features(encode, dataset, CPU, 64, 0),
        )
    )
    optimizer = optimizer_for_run(scaled_groups(method.parameters()), config)
    # encoder at the base rate, the light parts at peft_lr_scale (100) times it; each split by weight decay
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 0.1, 0.1])
    batch = collate([train_set[i] for i in range(8)])

    def snapshot() -> dict[str, torch.Tensor]:
        return {
            "encoder": torch.cat([p.detach().flatten() for p in method.model.visual.parameters()]).clone(),
            "text tower": torch.cat([p.detach().flatten() for p in method.model.transformer.parameters()]).clone(),
            "context": torch.cat(
                [method.positive.context.detach().flatten(), method.negative.context.detach().flatten()]
            ).clone(),
            "adapter": torch.cat([p.detach().flatten() for p in method.adapter.parameters()]).clone(),
            "vision class vectors": torch.cat([p.detach().flatten() for p in method.head.values()]).clone(),
        }

    def train_step(step: int) -> set[str]:
        before = snapshot()
        optimizer.zero_grad(set_to_none=True)
        method.training_step(batch, step).loss.backward()
        optimizer.step()
        after = snapshot()
        return {name for name in before if not torch.equal(before[name], after[name])}

    assert method.schedule(0) == (0, 1) and method.schedule(1) == (0, 2)
    assert train_step(0) == {"context", "adapter", "vision class vectors"}
    assert train_step(1) == {"encoder", "context", "adapter", "vision class vectors"}


# --- runs through the command line ----------------------------------------------------------------------
def train_args(root: str, out, method: str, name: str, *extra: str) -> list[str]:
    schedule = {"batch_size": 8, "eval_every": 0, "log_every": 1, "checkpoint_every": 1, "lr": "1e-3"}
    return tiny_run_argv(method, out, name, *extra, root=root, **schedule)


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
    args = train_args(
        str(eurosat_zip.parent),
        tmp_path,
        "coft",
        "run",
        "--max-steps",
        "4",
        "--phase1-fraction",
        "0.5",
        "--clean-warmup-fraction",
        "0.25",
    )
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "phase" in r]
    assert [r["phase"] for r in steps] == [1.0, 1.0, 2.0, 2.0]
    assert steps[0]["kept"] == 1.0 and steps[0]["coft/rejected"] == 0.0  # the warm-up step keeps every round label
    for record in steps:  # the analysis of the judgement reads labels (EuroSAT has them); training never does
        assert (
            0.0 <= record["analysis/clean_judgement_acc"] <= 1.0 and "text/not" in record and "vision/prior" in record
        )
    assert_eval_reproduces(tmp_path / "run")


def test_coft_plus_needs_class_descriptions(eurosat_zip, tmp_path):
    assert main(train_args(str(eurosat_zip.parent), tmp_path, "coft_plus", "run", "--max-steps", "2")) == 2


def fill_store(root: str, path) -> None:
    """Kind 'class' descriptions for the first images of the limited training split."""
    train = build_dataset("eurosat", root, "train", None, DatasetOptions(limit=40, seed=0))
    store = DescriptionStore(path)
    for index in range(0, 40, 3):
        store.put(
            image_key(train.read_bytes(index)),
            "class",
            "describe the class",
            "test",
            "none",
            f"land seen from orbit, kind {index % 4}",
        )
    store.close()


@pytest.mark.slow
def test_coft_plus_rounds_resume_to_the_same_result(eurosat_zip, tmp_path, monkeypatch):
    root = str(eurosat_zip.parent)
    store = tmp_path / "store.sqlite"
    fill_store(root, store)
    extra = [
        "--max-steps",
        "7",
        "--rounds",
        "3",
        "--phase1-fraction",
        "0.5",
        "--clean-warmup-fraction",
        "0.2",
        "--queue-size",
        "12",
        "--store",
        str(store),
    ]
    assert main(train_args(root, tmp_path, "coft_plus", "straight", *extra)) == 0
    straight = tmp_path / "straight"
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    # rounds of 2, 2 and 3 steps: pseudo-labels refreshed at steps 0, 2, 4; phase 1 half of each (rounded)
    assert [r["step"] for r in records if "coft/round" in r] == [1, 3, 5]
    assert [r["phase"] for r in records if "phase" in r] == [1.0, 2.0, 1.0, 2.0, 1.0, 1.0, 2.0]
    assert_eval_reproduces(straight)

    original = CoftPlus.training_step

    def interrupted(self, batch, step):
        if step == 3:  # killed inside round 1, in its phase 2
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(CoftPlus, "training_step", interrupted)
    assert main(train_args(root, tmp_path, "coft_plus", "resumed", *extra)) == 130
    monkeypatch.setattr(CoftPlus, "training_step", original)
    assert main(train_args(root, tmp_path, "coft_plus", "resumed", *extra, "--resume")) == 0

    a, b = load_checkpoint(straight / "final.pt"), load_checkpoint(tmp_path / "resumed" / "final.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    for key in ("queue_keys", "descriptions", "pseudo_labels"):
        assert torch.allclose(a["method_state"][key].float(), b["method_state"][key].float(), atol=1e-6), key
    assert a["method_state"]["queue_position"] == b["method_state"]["queue_position"]
    for key in a["method_state"]["key_encoder"]:
        assert torch.allclose(
            a["method_state"]["key_encoder"][key], b["method_state"]["key_encoder"][key], atol=1e-6
        ), key
    assert (
        json.loads((straight / "results.json").read_text())["test"]
        == json.loads((tmp_path / "resumed" / "results.json").read_text())["test"]
    )
