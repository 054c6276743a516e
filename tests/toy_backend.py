"""A toy model type for the registry test: every patent gets each label's share of the training patents.

This file and one line in ``patentml.variants.BACKENDS`` are all a new variant needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from patentml.variants.base import Backend, Corpus, FitContext


class LabelPrior(Backend):
    """Scores every label by how often it occurs in training (smoothed): the floor any model must beat."""

    name = "prior"
    DEFAULTS = {"smoothing": 1.0}

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        counts = dict.fromkeys(self.labels, 0)
        for _, _, labels in train:
            for label in labels:
                if label in counts:
                    counts[label] += 1
        total = len(train) + float(self.params["smoothing"]) * len(self.labels)
        self.prior = [(counts[l] + float(self.params["smoothing"])) / total for l in self.labels]

    def predict_scores(self, texts: Sequence[str], batch_size: int | None = None) -> Any:
        import numpy as np

        return np.tile(np.asarray(self.prior, dtype=np.float32), (len(texts), 1))

    def _save(self, folder: Path) -> None:
        (folder / "prior.json").write_text(json.dumps(self.prior))

    def _load(self, folder: Path) -> None:
        self.prior = json.loads((folder / "prior.json").read_text())
