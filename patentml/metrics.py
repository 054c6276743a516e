"""Evaluation as in the paper: example-based P/R/F1, top-k, per CPC section and label, co-occurrences, thresholds."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import precision_recall_fscore_support

from patentml.decision import PAPER_THRESHOLD as DEFAULT_THRESHOLD
from patentml.decision import TIE_EPS, decide

DEFAULT_KS = (1, 5)
#: Candidate thresholds for choosing a decision rule on validation data.
DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
#: Labels with fewer validation positives keep the global threshold: a handful of examples overfits.
DEFAULT_MIN_SUPPORT = 10

# Conventions (all follow sklearn's ``zero_division=0``):
# - a patent with no predicted label has precision 0 (and so F1 0), not "undefined";
# - a patent with no true label has recall 0, and F1 0 even when nothing is predicted for it;
# - a label never predicted has precision 0, a label never true has recall 0.
# Predictions are ``score >= threshold``.


def _as_bool_matrix(y: Any, name: str) -> np.ndarray:
    """Dense (n, L) bool array from a 0/1 numpy array, bool array or scipy sparse matrix."""
    array = np.asarray(y.toarray() if sp.issparse(y) else y)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (patents, labels), got shape {array.shape}")
    if array.dtype != bool:
        if not ((array == 0) | (array == 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1")
        array = array.astype(bool)
    return array


def _check(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    truth = _as_bool_matrix(y_true, "y_true")
    score = np.asarray(scores)
    if score.shape != truth.shape:
        raise ValueError(f"scores {score.shape} and y_true {truth.shape} differ in shape")
    if truth.shape[0] == 0 or truth.shape[1] < 2:
        raise ValueError(f"need at least one patent and two labels, got shape {truth.shape}")
    if score.dtype.kind != "f" or score.dtype.itemsize < 4:
        score = score.astype(np.float32)
    if not np.isfinite(score).all():
        raise ValueError("scores contain NaN or infinity")
    return truth, score


def _top_mask(scores: np.ndarray) -> np.ndarray:
    """(n, L) bool: True at each patent's highest-scoring label."""
    mask = np.zeros(scores.shape, dtype=bool)
    mask[np.arange(scores.shape[0]), scores.argmax(axis=1)] = True
    return mask


def example_prf(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Example-based precision, recall, F1 (each averaged over patents): the paper's headline metric."""
    truth = _as_bool_matrix(y_true, "y_true")
    pred = _as_bool_matrix(y_pred, "y_pred")
    if truth.shape != pred.shape or truth.shape[1] < 2:
        raise ValueError(f"y_true {truth.shape} and y_pred {pred.shape} must match, with at least two labels")
    # Sparse input skips sklearn's dense type sniffing (np.unique over n * L values).
    p, r, f, _ = precision_recall_fscore_support(
        sp.csr_matrix(truth), sp.csr_matrix(pred), average="samples", zero_division=0
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def _example_f1_sum(truth: np.ndarray, pred: np.ndarray, n_true: np.ndarray) -> float:
    """Sum over patents of F1_i = 2 |pred ∩ true| / (|pred| + |true|) (0 when both are empty)."""
    tp = np.count_nonzero(pred & truth, axis=1)
    denom = np.count_nonzero(pred, axis=1) + n_true
    return float(np.divide(2.0 * tp, denom, out=np.zeros(len(tp)), where=denom > 0).sum())


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` highest scores per row, highest first (ties by column order).

    argpartition finds them in O(columns) per row; only those ``k`` are then sorted.
    """
    k = max(1, min(int(k), scores.shape[1]))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (n, k), unordered
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def at_k(y_true: Any, scores: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Ranked metrics of DeepPatent/PatentBERT: ``p@k``, ``r@k``, ``f1@k`` for each k.

    P@k = |top-k ∩ true| / k and R@k = |top-k ∩ true| / |true|, averaged over patents; F1@k is the
    harmonic mean of the averaged P@k and R@k, as the benchmark tables report it. The paper's caveat
    holds by construction: a patent with more than k labels cannot reach R@k = 1, and one with
    fewer than k labels cannot reach P@k = 1. Thresholds play no part here.
    """
    truth, score = _check(y_true, scores)
    n, n_labels = truth.shape
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive, got {ks}")
    k_max = min(max(ks), n_labels)
    top = top_k(score, k_max)  # (n, k_max), best first
    hits = np.take_along_axis(truth, top, axis=1).cumsum(axis=1)  # (n, k_max): true labels among the first j+1
    n_true = truth.sum(axis=1)
    result: dict[str, float] = {}
    for k in ks:
        k_eff = min(k, n_labels)
        found = hits[:, k_eff - 1]
        precision = float((found / k_eff).mean())
        recall = float(np.divide(found, n_true, out=np.zeros(n), where=n_true > 0).mean())
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        result.update({f"p@{k}": precision, f"r@{k}": recall, f"f1@{k}": f1})
    return result


def _prf(tp: float, n_pred: float, n_true: float) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def section_of(label: str) -> str:
    """CPC section of a subclass code: its first letter (``H04L`` -> ``H``)."""
    return label[:1].upper()


def section_metrics(truth: Any, pred: Any, label_names: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Paper table 3: per CPC section, micro P/R/F1 over that section's label columns, and its patents.

    ``n_patents`` counts test patents with at least one true label in the section (a patent with
    labels in two sections counts in both); ``n_labels`` is the number of label columns.
    """
    y = _as_bool_matrix(truth, "y_true")
    p = _as_bool_matrix(pred, "y_pred")
    if y.shape != p.shape or len(label_names) != y.shape[1]:
        raise ValueError(f"y_true {y.shape}, y_pred {p.shape} and {len(label_names)} label names do not match")
    tp = np.count_nonzero(y & p, axis=0)
    n_pred = np.count_nonzero(p, axis=0)
    n_true = np.count_nonzero(y, axis=0)
    sections = np.array([section_of(name) for name in label_names])
    result: dict[str, dict[str, float | int]] = {}
    for section in sorted(set(sections.tolist())):
        cols = sections == section
        precision, recall, f1 = _prf(int(tp[cols].sum()), int(n_pred[cols].sum()), int(n_true[cols].sum()))
        result[section] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "n_patents": int(np.count_nonzero(y[:, cols].any(axis=1))),
            "n_labels": int(cols.sum()),
        }
    return result


def label_metrics(truth: Any, pred: Any, label_names: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Per label: precision, recall, F1, support (true patents) and n_predicted (predicted patents)."""
    y = _as_bool_matrix(truth, "y_true")
    p = _as_bool_matrix(pred, "y_pred")
    if y.shape != p.shape or y.shape[1] < 2:
        raise ValueError(f"y_true {y.shape} and y_pred {p.shape} must match, with at least two labels")
    if len(label_names) != y.shape[1]:
        raise ValueError(f"{len(label_names)} label names for {y.shape[1]} label columns")
    precision, recall, f1, support = precision_recall_fscore_support(
        sp.csr_matrix(y), sp.csr_matrix(p), average=None, labels=np.arange(y.shape[1]), zero_division=0
    )
    n_pred = np.count_nonzero(p, axis=0)
    return {
        name: {
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1": float(f1[j]),
            "support": int(support[j]),
            "n_predicted": int(n_pred[j]),
        }
        for j, name in enumerate(label_names)
    }


def label_cooccurrence(
    y_true: Any, y_pred: Any, label_names: Sequence[str], label: str, top: int = 10
) -> dict[str, Any]:
    """Paper table 4 for one label X: which other labels come with X, most frequent first.

    Groups of patents, each with ``n_patents`` and the ``top`` other labels (count > 0) by count:
    ``truth``: X is a true label; counted in the truth. The other groups count labels in the
    predictions: ``predicted`` (X predicted), ``predicted_correct`` (X predicted and true),
    ``predicted_incorrect`` (X predicted, not true) and ``missed`` (X true, not predicted: what
    was predicted instead). The paper's "incorrectly" row has 3564 - 3433 = 131 patents, i.e.
    its size matches ``missed``. Lists, not mappings, so the order survives JSONB.
    """
    y = _as_bool_matrix(y_true, "y_true")
    p = _as_bool_matrix(y_pred, "y_pred")
    names = list(label_names)
    if y.shape != p.shape or len(names) != y.shape[1]:
        raise ValueError(f"y_true {y.shape}, y_pred {p.shape} and {len(names)} label names do not match")
    if label not in names:
        raise ValueError(f"label {label!r} is not in the label space")
    j = names.index(label)
    groups = {
        "truth": (y[:, j], y),
        "predicted": (p[:, j], p),
        "predicted_correct": (p[:, j] & y[:, j], p),
        "predicted_incorrect": (p[:, j] & ~y[:, j], p),
        "missed": (y[:, j] & ~p[:, j], p),
    }
    result: dict[str, Any] = {"label": label}
    for group, (rows, source) in groups.items():
        counts = np.count_nonzero(source[rows], axis=0)
        counts[j] = 0  # X itself: its count is n_patents (or 0 for "missed")
        order = np.argsort(-counts, kind="stable")[:top]  # ties keep label order
        result[group] = {
            "n_patents": int(rows.sum()),
            "labels": [{"label": names[i], "count": int(counts[i])} for i in order if counts[i] > 0],
        }
    return result


def choose_threshold(
    y_true: Any,
    scores: Any,
    grid: Sequence[float] = DEFAULT_GRID,
    keep_top: bool = False,
    top_ratio: float = 0.0,
) -> tuple[float, float]:
    """The global threshold of ``grid`` with the best example F1 on validation data: ``(threshold, f1)``.

    Ties go to the lowest threshold, the side of recall, which the paper's users prioritise.
    """
    truth, score = _check(y_true, scores)
    if not len(grid):
        raise ValueError("grid must hold at least one threshold")
    n_true = np.count_nonzero(truth, axis=1)
    top = _top_mask(score) if keep_top else None
    near_top = score >= top_ratio * score.max(axis=1, keepdims=True) if top_ratio > 0 and score.shape[1] else None
    best_threshold, best_sum = float(grid[0]), -1.0
    for threshold in sorted(float(t) for t in grid):
        pred = score >= threshold
        if near_top is not None:
            pred |= near_top
        if top is not None:
            pred |= top
        total = _example_f1_sum(truth, pred, n_true)
        if total > best_sum + TIE_EPS:
            best_threshold, best_sum = threshold, total
    return best_threshold, best_sum / truth.shape[0]


def choose_per_label_thresholds(
    y_true: Any,
    scores: Any,
    global_threshold: float,
    min_support: int = DEFAULT_MIN_SUPPORT,
    grid: Sequence[float] = DEFAULT_GRID,
    keep_top: bool = False,
    sweeps: int = 1,
) -> np.ndarray:
    """Per-label thresholds (L,) that raise the example F1 on validation data; others keep the global one.

    Coordinate ascent on the headline metric itself: for one label at a time, try every grid
    threshold with the other labels fixed and keep the best, if strictly better than the current.
    So the validation example F1 never drops below the global rule's. Labels with fewer than
    ``min_support`` validation positives back off to ``global_threshold``.
    """
    truth, score = _check(y_true, scores)
    if min_support < 1 or sweeps < 1:
        raise ValueError(f"min_support and sweeps must be positive, got {min_support}, {sweeps}")
    candidates = np.unique(np.append(np.asarray(grid, dtype=np.float64), float(global_threshold)))
    thresholds = np.full(truth.shape[1], float(global_threshold))
    top = _top_mask(score) if keep_top else np.zeros(truth.shape, dtype=bool)
    pred = (score >= global_threshold) | top
    tp = np.count_nonzero(pred & truth, axis=1)  # (n,) per patent, kept current as thresholds move
    n_pred = np.count_nonzero(pred, axis=1)
    n_true = np.count_nonzero(truth, axis=1)
    eligible = np.flatnonzero(np.count_nonzero(truth, axis=0) >= min_support)
    for _ in range(sweeps):
        changed = False
        for j in eligible:
            # Only patents whose decision on j can flip matter: scored above the lowest candidate and
            # not forced by keep_top. The rest add the same amount for every candidate.
            rows = np.flatnonzero((score[:, j] >= candidates[0]) & ~top[:, j])
            if rows.size == 0:
                continue
            col_true = truth[rows, j]
            col_pred = pred[rows, j]
            base_tp = tp[rows] - (col_pred & col_true)
            base_pred = n_pred[rows] - col_pred
            trial = score[rows, j][:, None] >= candidates[None, :]  # (rows, candidates)
            trial_tp = base_tp[:, None] + (trial & col_true[:, None])
            denom = base_pred[:, None] + trial + n_true[rows][:, None]
            f1_sum = np.divide(2.0 * trial_tp, denom, out=np.zeros(trial.shape), where=denom > 0).sum(axis=0)
            current = int(np.searchsorted(candidates, thresholds[j]))
            best = int(np.argmax(f1_sum))
            if f1_sum[best] > f1_sum[current] + TIE_EPS:
                thresholds[j] = candidates[best]
                new_col = trial[:, best]
                tp[rows] = base_tp + (new_col & col_true)
                n_pred[rows] = base_pred + new_col
                pred[rows, j] = new_col
                changed = True
        if not changed:
            break
    return thresholds


def evaluate_scores(
    y_true: Any,
    scores: Any,
    label_names: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    keep_top: bool = False,
    per_label_thresholds: Any = None,
    ks: Sequence[int] = DEFAULT_KS,
    cooccurrence_for: Sequence[str] = (),
    top_ratio: float = 0.0,
) -> dict[str, Any]:
    """Every metric of the paper in one JSON-safe dict (plain floats, ints, strings, lists, dicts).

    ``{"n_patents", "decision": {threshold, keep_top, per_label_thresholds},
    "example": {precision, recall, f1}, "at_k": {"p@1", "r@1", "f1@1", "p@5", "r@5", "f1@5"},
    "sections": {section: {precision, recall, f1, n_patents, n_labels}},
    "labels": {label: {precision, recall, f1, support, n_predicted}},
    "mean_pred_labels", "mean_true_labels", "empty_share", "n_no_true_label",
    "cooccurrence": {label: label_cooccurrence(...)}}``.
    """
    truth, score = _check(y_true, scores)
    if len(label_names) != truth.shape[1]:
        raise ValueError(f"{len(label_names)} label names for {truth.shape[1]} label columns")
    pred = decide(score, threshold, keep_top, per_label_thresholds, top_ratio)
    n_pred = np.count_nonzero(pred, axis=1)
    n_true = np.count_nonzero(truth, axis=1)
    return {
        "n_patents": int(truth.shape[0]),
        "decision": {
            "threshold": float(threshold),
            "keep_top": bool(keep_top),
            "top_ratio": float(top_ratio),
            "per_label_thresholds": per_label_thresholds is not None,
        },
        "example": example_prf(truth, pred),
        "at_k": at_k(truth, score, ks),
        "sections": section_metrics(truth, pred, label_names),
        "labels": label_metrics(truth, pred, label_names),
        "mean_pred_labels": float(n_pred.mean()),
        "mean_true_labels": float(n_true.mean()),
        "empty_share": float(np.mean(n_pred == 0)),
        # Test patents whose labels all lie outside the training label space score 0 (see conventions).
        "n_no_true_label": int(np.count_nonzero(n_true == 0)),
        "cooccurrence": {
            label: label_cooccurrence(truth, pred, label_names, label) for label in cooccurrence_for
        },
    }
