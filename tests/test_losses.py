"""The contrastive loss (method.md Eq. 3) against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from latteclip.models.losses import MAX_LOGIT_SCALE, contrastive_loss


def log_sum_exp(values: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in values))


def test_two_pairs_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # scale 10: logits = 10 * image @ text.T = [[6, 10], [8, 0]]
    # image->text, row 0 (target 0): -log(e^6 / (e^6 + e^10)) = log(1 + e^4)
    #              row 1 (target 1): -log(e^0 / (e^8 + e^0)) = log(1 + e^8)
    # text->image, column 0 (target 0): logits [6, 8] -> log(1 + e^2)
    #              column 1 (target 1): logits [10, 0] -> log(1 + e^10)
    image_to_text = (math.log(1 + math.exp(4)) + math.log(1 + math.exp(8))) / 2
    text_to_image = (math.log(1 + math.exp(2)) + math.log(1 + math.exp(10))) / 2
    expected = (image_to_text + text_to_image) / 2
    loss = contrastive_loss(image, text, torch.tensor(math.log(10.0)))
    assert abs(loss.item() - expected) < 1e-5
    assert abs(expected - 6.0364) < 1e-4  # the number itself, so that a slip in the formula above shows


def test_three_pairs_by_hand():
    image = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    text = torch.tensor([[0.8, 0.6, 0.0], [0.0, 0.6, 0.8], [0.6, 0.0, 0.8]])
    scale = 2.0
    logits = [[scale * sum(a * b for a, b in zip(i, t)) for t in text.tolist()] for i in image.tolist()]
    assert [x for row in logits for x in row] == pytest.approx([1.6, 0.0, 1.2, 1.2, 1.2, 0.0, 0.0, 1.6, 1.6])
    rows = [log_sum_exp(logits[k]) - logits[k][k] for k in range(3)]
    columns = [log_sum_exp([logits[j][k] for j in range(3)]) - logits[k][k] for k in range(3)]
    expected = 0.5 * (sum(rows) / 3 + sum(columns) / 3)
    loss = contrastive_loss(image, text, torch.tensor(math.log(scale)))
    assert abs(loss.item() - expected) < 1e-5


def test_logit_scale_is_clamped_at_100():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0]]), dim=-1)
    text = torch.nn.functional.normalize(torch.tensor([[0.9, 0.4], [0.1, 1.0]]), dim=-1)
    logits = [[100 * float(i @ t) for t in text] for i in image]
    rows = [log_sum_exp(logits[k]) - logits[k][k] for k in range(2)]
    columns = [log_sum_exp([logits[j][k] for j in range(2)]) - logits[k][k] for k in range(2)]
    at_100 = 0.5 * (sum(rows) / 2 + sum(columns) / 2)
    above = torch.tensor(math.log(1000.0), requires_grad=True)
    loss = contrastive_loss(image, text, above)
    assert abs(loss.item() - at_100) < 1e-4
    assert abs(contrastive_loss(image, text, torch.tensor(MAX_LOGIT_SCALE)).item() - at_100) < 1e-4
    loss.backward()
    assert above.grad.item() == 0.0  # past the clamp the temperature gets no gradient
    assert abs(MAX_LOGIT_SCALE - math.log(100.0)) < 1e-12


def test_gradients_reach_both_towers():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    text = torch.tensor([[0.6, 0.8], [1.0, 0.0]], requires_grad=True)
    contrastive_loss(image, text, torch.tensor(0.0)).backward()
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
