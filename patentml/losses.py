"""Training objectives of the paper (section 4.1, appendix A): BCE and alpha-weighted BCE, computed from logits."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from patentml.exceptions import ConfigError

LOSS_NAMES = ("bce", "wbce")
#: The paper's grid search chose alpha = 2 (section 4.4, appendix A).
PAPER_ALPHA = 2.0


def _smooth(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Move 0/1 targets toward 1/2: y * (1 - eps) + eps / 2."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return targets if label_smoothing == 0.0 else targets * (1.0 - label_smoothing) + 0.5 * label_smoothing


def weighted_bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = PAPER_ALPHA,
    *,
    label_smoothing: float = 0.0,
    pos_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The paper's weighted BCE, ``-(alpha * y * log sigmoid(z) + (1 - y) * log(1 - sigmoid(z)))``, averaged.

    The mean is over every (example, label) element, as Keras' ``K.mean`` in listing 2. Computed from
    logits (``log sigmoid(z) = -softplus(-z)``), so it stays finite where a probability would round to
    0 or 1; Keras instead clips probabilities to [1e-7, 1 - 1e-7], which caps each term near 16.1 -
    the two agree wherever that clip is inactive. For hard 0/1 targets this equals listing 2
    (``(alpha * y + 1 - y) * bce``); for smoothed targets we keep the paper's equation, which weights
    only the positive term. ``pos_weight`` (num_labels,) multiplies alpha per label, for tuning
    rare labels; ``alpha = 1`` without it is plain BCE.
    """
    if alpha <= 0:
        raise ConfigError(f"alpha must be positive, got {alpha}")
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    targets = _smooth(targets.to(logits.dtype), label_smoothing)
    weight: torch.Tensor | None = None
    if pos_weight is not None:
        weight = alpha * pos_weight.to(device=logits.device, dtype=logits.dtype)  # (num_labels,)
    elif alpha != 1.0:
        weight = torch.full((logits.shape[-1],), float(alpha), device=logits.device, dtype=logits.dtype)
    # pos_weight in PyTorch multiplies exactly the y * log(sigmoid(z)) term: the paper's alpha.
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight, reduction=reduction)


def bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Plain binary cross-entropy (appendix A), mean over all elements, from logits."""
    return weighted_bce_with_logits(logits, targets, 1.0, label_smoothing=label_smoothing, reduction=reduction)


class MultiLabelBCELoss(nn.Module):
    """BCE / weighted BCE as a module, so per-label weights follow ``.to(device)`` with the model."""

    pos_weight: torch.Tensor | None

    def __init__(
        self,
        alpha: float = 1.0,
        label_smoothing: float = 0.0,
        pos_weight: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if alpha <= 0:
            raise ConfigError(f"alpha must be positive, got {alpha}")
        _smooth(torch.zeros(1), label_smoothing)  # validate now, not at the first batch
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)
        weights = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss for logits and multi-hot targets of shape (batch, num_labels)."""
        return weighted_bce_with_logits(
            logits, targets, self.alpha, label_smoothing=self.label_smoothing, pos_weight=self.pos_weight
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, label_smoothing={self.label_smoothing}, per_label={self.pos_weight is not None}"


def make_loss(
    name: str,
    alpha: float = PAPER_ALPHA,
    label_smoothing: float = 0.0,
    pos_weight: torch.Tensor | Sequence[float] | None = None,
) -> MultiLabelBCELoss:
    """The loss of a variant: ``"bce"`` (alpha ignored: it is 1 by definition) or ``"wbce"`` (alpha on positives)."""
    if name == "bce":
        return MultiLabelBCELoss(1.0, label_smoothing, pos_weight)
    if name == "wbce":
        return MultiLabelBCELoss(alpha, label_smoothing, pos_weight)
    raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
