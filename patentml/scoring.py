"""Scoring a model on a split: one function for evaluation and promotion, unseen test labels included once.

``predict_split`` runs the model and builds the truth over its labels plus the test labels it never
saw; ``measure`` applies a decision rule and computes every metric; ``headline`` is the part of it
that screens and decisions show, and ``run_score`` picks a run's own rule out of an evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from patentml.exceptions import DataError
from patentml.variants.base import Corpus, collect

if TYPE_CHECKING:
    import numpy as np

    from patentml.decision import DecisionRule
    from patentml.variants.base import Backend

#: The metrics a run's score shows (everything else is in Postgres).
HEADLINE = ("precision", "recall", "f1", "p_at_1", "r_at_5", "f1_at_5", "empty_share", "mean_pred_labels")


@dataclass
class SplitPrediction:
    """A model's scores on a split, with the truth over its labels and the split's unseen ones."""

    ids: list[str]
    doc_labels: list[list[str]]
    scores: "np.ndarray"  # (n, L) the model's labels
    truth: "np.ndarray"  # (n, L + U) bool
    names: list[str]  # L + U label names
    seconds: float

    @property
    def n_unseen(self) -> int:
        return len(self.names) - self.scores.shape[1]

    @property
    def full_scores(self) -> "np.ndarray":
        """(n, L + U) scores: zero for the labels the model cannot predict."""
        import numpy as np

        out = np.zeros(self.truth.shape, dtype=np.float32)
        out[:, : self.scores.shape[1]] = self.scores
        return out


def predict_split(backend: "Backend", corpus: Corpus, what: str = "split") -> SplitPrediction:
    """Run ``backend`` over every patent of ``corpus``."""
    from patentml.labels import truth_matrix

    ids, texts, doc_labels = collect(corpus)
    if not texts:
        raise DataError(f"the {what} is empty: nothing to score on")
    started = time.perf_counter()
    scores = backend.predict_scores(texts)
    seconds = time.perf_counter() - started
    truth, names = truth_matrix(doc_labels, backend.labels)
    return SplitPrediction(ids, doc_labels, scores, truth, names, seconds)


def measure(pred: SplitPrediction, rule: "DecisionRule", cooccurrence_for: Sequence[str] = ()) -> dict[str, Any]:
    """Every metric of the paper for ``pred`` under ``rule`` (its per-label thresholds cover L + U labels)."""
    from patentml.metrics import evaluate_scores

    return evaluate_scores(pred.truth, pred.full_scores, pred.names, threshold=rule.threshold, keep_top=rule.keep_top,
                           per_label_thresholds=rule.per_label if rule.use_per_label else None,
                           cooccurrence_for=cooccurrence_for, top_ratio=rule.top_ratio)


def headline(m: dict[str, Any]) -> dict[str, float]:
    """The :data:`HEADLINE` scores of a ``measure`` result."""
    return {"precision": m["example"]["precision"], "recall": m["example"]["recall"], "f1": m["example"]["f1"],
            "p_at_1": m["at_k"]["p@1"], "r_at_5": m["at_k"]["r@5"], "f1_at_5": m["at_k"]["f1@5"],
            "empty_share": m["empty_share"], "mean_pred_labels": m["mean_pred_labels"]}


def own_rule(backend: "Backend", n_unseen: int) -> "DecisionRule":
    """The backend's decision rule as the evaluation reports it (extended to the unseen labels)."""
    return next(r for r in backend.decision.variants(n_unseen) if r.name == backend.decision.name)


def score_model(backend: "Backend", corpus: Corpus, what: str = "split") -> dict[str, Any]:
    """A model's score on a split under its own rule: the headline, ``rule``, ``n_patents``, ``n_unseen_labels``."""
    pred = predict_split(backend, corpus, what)
    return {**headline(measure(pred, own_rule(backend, pred.n_unseen))), "rule": backend.decision.name,
            "n_patents": len(pred.ids), "n_unseen_labels": pred.n_unseen}


def run_score(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The score of a run from an evaluation summary: its own rule's headline (what every screen shows)."""
    return {**evaluation["rules"][evaluation["rule"]], "rule": evaluation["rule"],
            "n_patents": evaluation["n_patents"]}
