"""A small head on sentence vectors: linear (one logistic regression per label, trained jointly) or one hidden layer."""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    """``hidden == 0``: dropout + linear; else dropout, dense ``hidden`` with GELU, dropout, linear."""

    def __init__(self, dim: int, n_labels: int, hidden: int, dropout: float) -> None:
        super().__init__()
        if hidden:
            self.net: nn.Module = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(),
                                                nn.Dropout(dropout), nn.Linear(hidden, n_labels))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (batch, labels) logits


class EncoderHead(nn.Module):
    """A sentence encoder's transformer and a head, trained together (fine-tuning); one state dict for both."""

    def __init__(self, encoder: nn.Module, head: Head) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
