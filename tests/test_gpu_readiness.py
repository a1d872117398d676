"""What a first GPU run would meet, shown on the CPU: pseudo-labels under bf16 autocast, device and precision choice, cache keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latteclip.config import resolve_config
from latteclip.engine.session import open_session


def session_of(root: str, method: str, **options):
    config = resolve_config({
        "method": method, "dataset": "eurosat", "root": root, "model": "latte-tiny", "pretrained": "random",
        "limit": 20, "device": "cpu", "workers": 0, "method_options": options,
    })
    return open_session(config)


def near_ties(weights: torch.Tensor) -> torch.Tensor:
    """Unit features halfway between each pair of class vectors, nudged by 1e-4 towards the second.

    fp32 tells the two cosines apart; bf16 (steps of about 0.004 near 1) rounds many of them together,
    and argmax then takes the lower class.
    """
    weights = F.normalize(weights.float(), dim=-1)
    rows = [weights[a] + weights[b] + 1e-4 * (weights[b] - weights[a])
            for a in range(len(weights)) for b in range(a + 1, len(weights))]
    return F.normalize(torch.stack(rows), dim=-1)


def bf16_flips(features: torch.Tensor, weights: torch.Tensor) -> int:
    """How many rows a plain bf16 product labels differently from fp32: the case really has near ties."""
    fp32 = (features @ weights.t()).argmax(dim=1)
    return int(((features.bfloat16() @ weights.bfloat16().t()).argmax(dim=1) != fp32).sum())


def test_coft_labels_under_bf16_autocast_equal_the_fp32_labels(eurosat_zip):
    method = session_of(str(eurosat_zip.parent), "coft").method
    with torch.no_grad():
        positive = method.prompt_features()[0]
        frozen, vision = near_ties(positive), near_ties(method.vision_pair()[0]).roll(7, dims=0)
        assert bf16_flips(frozen, positive) > 5
        round_labels = torch.arange(len(frozen)) % method.info.num_classes
        expected = method.choose(round_labels, frozen, vision)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = method.choose(round_labels, frozen, vision)
    for want, have in zip(expected, got):
        assert torch.equal(want, have)


def test_flyp_current_labels_under_bf16_autocast_equal_the_fp32_labels(eurosat_zip):
    method = session_of(str(eurosat_zip.parent), "flyp_pl", pseudo_labels="current").method
    assert not method.needs_zero_shot_labels
    with torch.no_grad():
        classifier = method.classifier()
        features = near_ties(classifier)
        assert bf16_flips(features, classifier) > 5
        expected = method.labels_for({}, features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = method.labels_for({}, features)
    assert torch.equal(expected, got)
