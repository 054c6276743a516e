"""Losses: the paper's weighted BCE against hand computations, plain BCE, and numerical stability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from patentml.exceptions import ConfigError
from patentml.losses import MultiLabelBCELoss, bce_with_logits, make_loss, weighted_bce_with_logits

# Two patents, two labels. softplus(x) = log(1 + e^x);
# -log sigmoid(z) = softplus(-z) and -log(1 - sigmoid(z)) = softplus(z).
LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 3.0]], dtype=torch.float64)
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
# Element by element, alpha = 2:
#   (0,0) y=1, z=0:  2 * softplus(0)  = 2 * 0.6931472 = 1.3862944
#   (0,1) y=0, z=2:      softplus(2)  =                 2.1269280
#   (1,0) y=0, z=-1:     softplus(-1) =                 0.3132617
#   (1,1) y=1, z=3:  2 * softplus(-3) = 2 * 0.0485874 = 0.0971747
#   mean = 3.9236588 / 4 = 0.9809147
HAND_WBCE = 0.9809147
# alpha = 1: (0.6931472 + 2.1269280 + 0.3132617 + 0.0485874) / 4 = 3.1819243 / 4
HAND_BCE = 0.7954811


def keras_weighted_bce(y_true: torch.Tensor, logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Listing 2 of the paper on probabilities: mean((alpha * y + 1 - y) * bce(y, p))."""
    p = torch.sigmoid(logits)
    bce = -(y_true * torch.log(p) + (1 - y_true) * torch.log(1 - p))
    return torch.mean(bce * (y_true * alpha + (1.0 - y_true)))


def test_weighted_bce_matches_hand_computation() -> None:
    assert weighted_bce_with_logits(LOGITS, TARGETS, alpha=2.0).item() == pytest.approx(HAND_WBCE, abs=1e-6)


def test_bce_matches_hand_computation_and_alpha_one() -> None:
    assert bce_with_logits(LOGITS, TARGETS).item() == pytest.approx(HAND_BCE, abs=1e-6)
    assert weighted_bce_with_logits(LOGITS, TARGETS, alpha=1.0).item() == pytest.approx(HAND_BCE, abs=1e-6)
    assert bce_with_logits(LOGITS, TARGETS).item() == pytest.approx(
        F.binary_cross_entropy(torch.sigmoid(LOGITS), TARGETS).item(), abs=1e-9
    )


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
def test_pos_weight_form_equals_logsigmoid_form_and_keras_listing(alpha: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 9, generator=gen, dtype=torch.float64) * 3
    targets = (torch.rand(16, 9, generator=gen) < 0.2).to(torch.float64)
    # The paper's equation written with logsigmoid: -(alpha y log s(z) + (1 - y) log(1 - s(z))).
    by_hand = -(alpha * targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits)).mean()
    ours = weighted_bce_with_logits(logits, targets, alpha)
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-12)
    assert ours.item() == pytest.approx(keras_weighted_bce(targets, logits, alpha).item(), rel=1e-9)


def test_alpha_raises_only_the_positive_term() -> None:
    negatives_only = torch.zeros_like(TARGETS)
    assert weighted_bce_with_logits(LOGITS, negatives_only, 5.0).item() == pytest.approx(
        bce_with_logits(LOGITS, negatives_only).item()
    )
    positives_only = torch.ones_like(TARGETS)
    assert weighted_bce_with_logits(LOGITS, positives_only, 2.0).item() == pytest.approx(
        2 * bce_with_logits(LOGITS, positives_only).item()
    )


def test_stable_for_extreme_logits() -> None:
    logits = torch.tensor([[-100.0, 100.0], [100.0, -100.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = weighted_bce_with_logits(logits, targets, alpha=2.0)
    loss.backward()
    # Wrong and confident: 2 * softplus(100) = 200 and softplus(100) = 100; right and confident: ~0.
    # Mean = (200 + 100 + 0 + 0) / 4 = 75 (Keras' probability clip would have capped this near 12).
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(75.0, rel=1e-6)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_label_smoothing_by_hand() -> None:
    # eps = 0.2: y = 1 -> 0.9, y = 0 -> 0.1; alpha = 2.
    #   z=0, y'=0.9: 2 * 0.9 * softplus(0) + 0.1 * softplus(0) = 1.9 * 0.6931472 = 1.3169796
    #   z=2, y'=0.1: 2 * 0.1 * softplus(-2) + 0.9 * softplus(2) = 0.0253856 + 1.9142352 = 1.9396208
    #   mean = 1.6283002
    loss = weighted_bce_with_logits(
        torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]]), alpha=2.0, label_smoothing=0.2
    )
    assert loss.item() == pytest.approx(1.6283002, abs=1e-6)


def test_per_label_pos_weight_multiplies_alpha() -> None:
    weights = torch.tensor([3.0, 0.5], dtype=torch.float64)
    ours = weighted_bce_with_logits(LOGITS, TARGETS, 2.0, pos_weight=weights)
    expected = -(
        2.0 * weights * TARGETS * F.logsigmoid(LOGITS) + (1 - TARGETS) * F.logsigmoid(-LOGITS)
    ).mean()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)


def test_make_loss() -> None:
    assert make_loss("wbce", alpha=2.0)(LOGITS, TARGETS).item() == pytest.approx(HAND_WBCE, abs=1e-6)
    # "bce" is alpha = 1 whatever alpha says: the loss name is the variant.
    assert make_loss("bce", alpha=2.0)(LOGITS, TARGETS).item() == pytest.approx(HAND_BCE, abs=1e-6)
    with pytest.raises(ConfigError, match="unknown loss"):
        make_loss("focal")
    with pytest.raises(ConfigError, match="alpha"):
        make_loss("wbce", alpha=0.0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        make_loss("bce", label_smoothing=1.0)


def test_loss_module_carries_pos_weight_as_buffer() -> None:
    loss = MultiLabelBCELoss(alpha=2.0, pos_weight=[1.0, 2.0])
    assert "pos_weight" in dict(loss.named_buffers())
    assert loss.to(torch.float64).pos_weight is not None
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(2, 2), torch.zeros(2, 3))
