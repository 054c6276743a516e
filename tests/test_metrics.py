"""Metrics against small examples worked out by hand, and against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import precision_recall_fscore_support

from patentml.metrics import (
    at_k,
    choose_per_label_thresholds,
    choose_threshold,
    decide,
    evaluate_scores,
    example_prf,
    label_cooccurrence,
    label_metrics,
    section_metrics,
)

LABELS = ["A01H", "A61K", "C12N", "H04L", "H04W"]  # sections A, A, C, H, H
Y_TRUE = np.array(
    [
        [1, 0, 1, 0, 0],  # P0: A01H, C12N
        [0, 0, 0, 1, 0],  # P1: H04L
        [0, 1, 1, 0, 1],  # P2: A61K, C12N, H04W  (3 labels: more than k = 1 or 2)
        [0, 0, 0, 1, 1],  # P3: H04L, H04W
    ]
)
SCORES = np.array(
    [
        [0.90, 0.10, 0.60, 0.00, 0.20],  # >= 0.5: A01H, C12N            -> exact
        [0.10, 0.20, 0.00, 0.40, 0.30],  # >= 0.5: nothing               -> empty prediction; top is H04L
        [0.70, 0.80, 0.30, 0.10, 0.55],  # >= 0.5: A01H, A61K, H04W      -> 2 of 3 right
        [0.05, 0.00, 0.00, 0.60, 0.45],  # >= 0.5: H04L                  -> 1 of 2 found
    ]
)
# Example-based at 0.5, per patent (|pred ∩ true|, |pred|, |true|) -> P, R, F1 = 2|∩| / (|pred| + |true|):
#   P0 (2, 2, 2) -> 1,   1,   1
#   P1 (0, 0, 1) -> 0,   0,   0      (no prediction: precision 0 by convention)
#   P2 (2, 3, 3) -> 2/3, 2/3, 2/3
#   P3 (1, 1, 2) -> 1,   1/2, 2/3
HAND_EXAMPLE = {"precision": (1 + 0 + 2 / 3 + 1) / 4, "recall": (1 + 0 + 2 / 3 + 1 / 2) / 4,
                "f1": (1 + 0 + 2 / 3 + 2 / 3) / 4}  # 2/3, 13/24, 7/12
# keep_top only changes P1: {} -> {H04L} = (1, 1, 1); the other patents' top labels are already predicted.
HAND_KEEP_TOP = {"precision": (1 + 1 + 2 / 3 + 1) / 4, "recall": (1 + 1 + 2 / 3 + 1 / 2) / 4,
                 "f1": (1 + 1 + 2 / 3 + 2 / 3) / 4}  # 11/12, 19/24, 5/6


def sklearn_samples(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="samples", zero_division=0)
    return {"precision": p, "recall": r, "f1": f}


def test_example_based_by_hand_and_sklearn() -> None:
    pred = decide(SCORES, 0.5)
    assert pred.astype(int).tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 1], [0, 0, 0, 1, 0]]
    ours = example_prf(Y_TRUE, pred)
    assert ours == pytest.approx(HAND_EXAMPLE)
    assert ours == pytest.approx({"precision": 2 / 3, "recall": 13 / 24, "f1": 7 / 12})
    assert ours == pytest.approx(sklearn_samples(Y_TRUE, pred.astype(int)))


def test_keep_top_fills_the_empty_prediction() -> None:
    pred = decide(SCORES, 0.5, keep_top=True)
    assert pred[1].astype(int).tolist() == [0, 0, 0, 1, 0]
    assert (pred.sum(axis=1) > 0).all()
    ours = example_prf(Y_TRUE, pred)
    assert ours == pytest.approx({"precision": 11 / 12, "recall": 19 / 24, "f1": 5 / 6})
    assert ours == pytest.approx(HAND_KEEP_TOP)
    assert ours == pytest.approx(sklearn_samples(Y_TRUE, pred.astype(int)))


def test_per_label_thresholds_with_nan_fallback() -> None:
    # A61K at 0.15 (P1's 0.20 now counts), H04W falls back to 0.5 (NaN); others 0.5.
    pred = decide(SCORES, 0.5, per_label_thresholds=[0.5, 0.15, 0.5, 0.5, np.nan])
    assert pred[:, 1].astype(int).tolist() == [0, 1, 1, 0]
    assert pred[:, 4].astype(int).tolist() == [0, 0, 1, 0]


def test_patent_without_true_label_follows_sklearn_zero_division() -> None:
    y = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    # P0 perfect (1,1,1); P1 has neither true nor predicted labels -> 0,0,0; P2 empty prediction -> 0,0,0.
    assert example_prf(y, pred) == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3})
    assert example_prf(y, pred) == pytest.approx(sklearn_samples(y, pred))


def test_top_k_by_hand() -> None:
    # Rankings (best first) and hits among the top 1 / top 2; |true| in brackets:
    #   P0 A01H .9, C12N .6   -> top1 1 hit, top2 2 hits  [2]
    #   P1 H04L .4, H04W .3   -> 1, 1                      [1]
    #   P2 A61K .8, A01H .7   -> 1, 1                      [3]  more labels than k: R@1 <= 1/3, R@2 <= 2/3
    #   P3 H04L .6, H04W .45  -> 1, 2                      [2]
    # P@1 = 4/4 = 1;          R@1 = (1/2 + 1 + 1/3 + 1/2)/4 = 7/12; F1@1 = 2*1*(7/12)/(1 + 7/12) = 14/19
    # P@2 = (1 + 1/2 + 1/2 + 1)/4 = 3/4; R@2 = (1 + 1 + 1/3 + 1)/4 = 5/6; F1@2 = 2*(3/4)(5/6)/(3/4 + 5/6) = 15/19
    result = at_k(Y_TRUE, SCORES, ks=(1, 2))
    assert result == pytest.approx(
        {"p@1": 1.0, "r@1": 7 / 12, "f1@1": 14 / 19, "p@2": 3 / 4, "r@2": 5 / 6, "f1@2": 15 / 19}
    )
    # k = 5 = every label: P@5 = mean |true| / 5 = 8/4/5 = 0.4, R@5 = 1.
    assert at_k(Y_TRUE, SCORES, ks=(5,)) == pytest.approx({"p@5": 0.4, "r@5": 1.0, "f1@5": 2 * 0.4 / 1.4})


def test_top_k_recall_is_capped_by_k() -> None:
    # One patent with 3 true labels, scored perfectly: the top-1 slot holds one of three -> R@1 = 1/3,
    # top-2 -> 2/3; P@k stays 1. The ranking is perfect, the metric still cannot say so (paper, appendix C).
    y = np.array([[1, 1, 1, 0, 0, 0]])
    s = np.array([[0.9, 0.8, 0.7, 0.1, 0.0, 0.2]])
    result = at_k(y, s, ks=(1, 2, 5))
    assert result["r@1"] == pytest.approx(1 / 3) and result["p@1"] == 1.0
    assert result["r@2"] == pytest.approx(2 / 3) and result["p@2"] == 1.0
    # With 5 slots for 3 labels precision is capped instead: 3/5.
    assert result["r@5"] == 1.0 and result["p@5"] == pytest.approx(3 / 5)


def test_sections_by_hand_and_sklearn_micro() -> None:
    pred = decide(SCORES, 0.5)
    # Section A = A01H, A61K: tp 2 (P0 A01H, P2 A61K), predicted 3 (+ P2 A01H), true 2
    #   -> P 2/3, R 1, F1 2*(2/3)/(5/3) = 4/5; patents with a true A label: P0, P2 -> 2.
    # Section C = C12N: tp 1, predicted 1, true 2 -> 1, 1/2, 2/3; patents P0, P2 -> 2.
    # Section H = H04L, H04W: tp 2 (P3 H04L, P2 H04W), predicted 2, true 4 -> 1, 1/2, 2/3; patents P1, P2, P3 -> 3.
    sections = section_metrics(Y_TRUE, pred, LABELS)
    assert sections == {
        "A": pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "n_patents": 2, "n_labels": 2}),
        "C": pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "n_patents": 2, "n_labels": 1}),
        "H": pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "n_patents": 3, "n_labels": 2}),
    }
    for section, cols in {"A": [0, 1], "C": [2], "H": [3, 4]}.items():
        # sklearn reads a single column as a binary problem, where "micro" would also count the negatives.
        truth, guess = Y_TRUE[:, cols], pred[:, cols].astype(int)
        p, r, f, _ = precision_recall_fscore_support(
            *((truth.ravel(), guess.ravel()) if len(cols) == 1 else (truth, guess)),
            average="binary" if len(cols) == 1 else "micro",
            zero_division=0,
        )
        assert [sections[section]["precision"], sections[section]["recall"], sections[section]["f1"]] == (
            pytest.approx([p, r, f])
        )


def test_labels_by_hand_and_sklearn() -> None:
    pred = decide(SCORES, 0.5)
    labels = label_metrics(Y_TRUE, pred, LABELS)
    # A01H: true {P0}, predicted {P0, P2} -> P 1/2, R 1, F1 2/3.  A61K: {P2} / {P2} -> 1, 1, 1.
    # C12N: true {P0, P2}, predicted {P0} -> 1, 1/2, 2/3.  H04L: {P1, P3} / {P3}.  H04W: {P2, P3} / {P2}.
    assert labels["A01H"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1, "n_predicted": 2}
    )
    assert labels["A61K"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1, "n_predicted": 1})
    assert labels["C12N"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2, "n_predicted": 1}
    )
    p, r, f, s = precision_recall_fscore_support(Y_TRUE, pred.astype(int), average=None, zero_division=0)
    for j, name in enumerate(LABELS):
        assert [labels[name][key] for key in ("precision", "recall", "f1", "support")] == pytest.approx(
            [p[j], r[j], f[j], s[j]]
        )


def test_cooccurrence_table_by_hand() -> None:
    pred = decide(SCORES, 0.5)
    table = label_cooccurrence(Y_TRUE, pred, LABELS, "A01H")
    # Truth: A01H only on P0, whose other true label is C12N.
    assert table["truth"] == {"n_patents": 1, "labels": [{"label": "C12N", "count": 1}]}
    # Predicted A01H on P0 (+ C12N) and P2 (+ A61K, H04W); ties keep label order.
    assert table["predicted"] == {
        "n_patents": 2,
        "labels": [{"label": "A61K", "count": 1}, {"label": "C12N", "count": 1}, {"label": "H04W", "count": 1}],
    }
    assert table["predicted_correct"] == {"n_patents": 1, "labels": [{"label": "C12N", "count": 1}]}
    assert table["predicted_incorrect"] == {
        "n_patents": 1,
        "labels": [{"label": "A61K", "count": 1}, {"label": "H04W", "count": 1}],
    }
    assert table["missed"] == {"n_patents": 0, "labels": []}
    # C12N is missed on P2, where A01H, A61K and H04W were predicted instead.
    assert label_cooccurrence(Y_TRUE, pred, LABELS, "C12N")["missed"]["n_patents"] == 1
    with pytest.raises(ValueError, match="not in the label space"):
        label_cooccurrence(Y_TRUE, pred, LABELS, "Y02E")


def test_choose_threshold_by_hand() -> None:
    # t = 0.3: P0 {A01H, C12N} F 1; P1 {H04L, H04W} (1, 2, 1) F 2/3; P2 {A01H, A61K, C12N, H04W} (3, 4, 3) F 6/7;
    #          P3 {H04L, H04W} F 1 -> (2 + 2/3 + 6/7) / 4 = 37/42.
    # t = 0.5: 7/12 (above).   t = 0.7: P0 {A01H} 2/3; P1 {} 0; P2 {A01H, A61K} (1, 2, 3) 2/5; P3 {} 0 -> 4/15.
    threshold, f1 = choose_threshold(Y_TRUE, SCORES, grid=[0.7, 0.5, 0.3])
    assert threshold == 0.3 and f1 == pytest.approx(37 / 42)
    assert f1 == pytest.approx(example_prf(Y_TRUE, decide(SCORES, 0.3))["f1"])
    threshold, f1 = choose_threshold(Y_TRUE, SCORES, grid=[0.5], keep_top=True)
    assert threshold == 0.5 and f1 == pytest.approx(5 / 6)


def test_choose_per_label_thresholds_by_hand() -> None:
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    s = np.array([[0.30, 0.1], [0.35, 0.1], [0.25, 0.9], [0.10, 0.6]])
    # Global 0.5: P0 {} 0, P1 {} 0, P2 {L1} 1, P3 {L1} 1 -> 0.5.
    # Label 0 at 0.2: P0, P1 -> 1; P2 {L0, L1} (1, 2, 1) -> 2/3; P3 1 -> (3 + 2/3) / 4 = 11/12. At 0.8: 0.5.
    # Label 1: 0.2 ties 0.5 (keep the global one); 0.8 drops P3 -> worse.
    thresholds = choose_per_label_thresholds(y, s, 0.5, min_support=2, grid=[0.2, 0.5, 0.8])
    assert thresholds.tolist() == [0.2, 0.5]
    assert example_prf(y, decide(s, 0.5, per_label_thresholds=thresholds))["f1"] == pytest.approx(11 / 12)
    # Two validation positives per label are too few at min_support=3: both back off to the global threshold.
    assert choose_per_label_thresholds(y, s, 0.5, min_support=3, grid=[0.2, 0.5, 0.8]).tolist() == [0.5, 0.5]


def random_problem(n: int, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Sparse truth (1-3 labels a patent) and scores that rank true labels higher, noisily."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, n_labels), dtype=bool)
    for i in range(n):
        y[i, rng.choice(n_labels, rng.integers(1, 4), replace=False)] = True
    scores = rng.random((n, n_labels)) ** 6
    scores[y] = np.clip(scores[y] + rng.random(int(y.sum())) * 0.9, 0, 1)
    names = [f"{'ABCDEFGHY'[j % 9]}{j % 100:02d}{chr(65 + j // 100)}" for j in range(n_labels)]
    return y, scores, names


def test_per_label_thresholds_never_lower_validation_f1() -> None:
    y, s, _ = random_problem(600, 40, seed=1)
    for keep_top in (False, True):
        global_t, global_f1 = choose_threshold(y, s, keep_top=keep_top)
        thresholds = choose_per_label_thresholds(y, s, global_t, min_support=5, keep_top=keep_top, sweeps=2)
        tuned = example_prf(y, decide(s, global_t, keep_top, thresholds))["f1"]
        assert tuned >= global_f1 - 1e-12
        rare = y.sum(axis=0) < 5
        assert (thresholds[rare] == global_t).all()


def test_evaluate_scores_layout_and_values() -> None:
    result = evaluate_scores(Y_TRUE, SCORES, LABELS, threshold=0.5, cooccurrence_for=["A01H"])
    assert json.loads(json.dumps(result)) == result  # JSON-safe: only plain types
    assert result["n_patents"] == 4 and result["n_no_true_label"] == 0
    assert result["example"] == pytest.approx(HAND_EXAMPLE)
    assert set(result["at_k"]) == {"p@1", "r@1", "f1@1", "p@5", "r@5", "f1@5"}
    assert result["at_k"]["p@1"] == 1.0 and result["at_k"]["r@1"] == pytest.approx(7 / 12)
    assert set(result["sections"]) == {"A", "C", "H"} and set(result["labels"]) == set(LABELS)
    # Predicted labels per patent 2, 0, 3, 1 -> 1.5; true 2, 1, 3, 2 -> 2; one of four predictions empty.
    assert result["mean_pred_labels"] == 1.5 and result["mean_true_labels"] == 2.0 and result["empty_share"] == 0.25
    assert result["cooccurrence"]["A01H"]["truth"]["n_patents"] == 1
    assert result["decision"] == {"threshold": 0.5, "keep_top": False, "top_ratio": 0.0, "per_label_thresholds": False}
    with_top = evaluate_scores(Y_TRUE, SCORES, LABELS, keep_top=True)
    assert with_top["example"] == pytest.approx(HAND_KEEP_TOP) and with_top["empty_share"] == 0.0


def test_evaluate_accepts_sparse_truth_and_rejects_bad_input() -> None:
    dense = evaluate_scores(Y_TRUE, SCORES, LABELS)
    assert evaluate_scores(sp.csr_matrix(Y_TRUE), SCORES, LABELS) == dense
    with pytest.raises(ValueError, match="shape"):
        evaluate_scores(Y_TRUE, SCORES[:, :4], LABELS)
    with pytest.raises(ValueError, match="label names"):
        evaluate_scores(Y_TRUE, SCORES, LABELS[:4])
    with pytest.raises(ValueError, match="0 and 1"):
        evaluate_scores(Y_TRUE * 2, SCORES, LABELS)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(Y_TRUE, np.where(SCORES > 0.8, np.nan, SCORES), LABELS)


def test_evaluate_matches_sklearn_at_paper_scale() -> None:
    # 4,000 test patents x 630 subclasses, the size of a nightly evaluation on the subset (its speed:
    # benchmarks/metrics.py).
    y, s, names = random_problem(4000, 630, seed=0)
    result = evaluate_scores(y, s.astype(np.float32), names, threshold=0.4, keep_top=True)
    pred = decide(s.astype(np.float32), 0.4, keep_top=True)
    assert result["example"] == pytest.approx(sklearn_samples(y, pred))
    sections = result["sections"]
    assert sum(v["n_labels"] for v in sections.values()) == 630
    for section in ("A", "Y"):
        cols = [j for j, name in enumerate(names) if name[0] == section]
        p, r, f, _ = precision_recall_fscore_support(y[:, cols], pred[:, cols], average="micro", zero_division=0)
        assert [sections[section][key] for key in ("precision", "recall", "f1")] == pytest.approx([p, r, f])
        assert sections[section]["n_patents"] == int(y[:, cols].any(axis=1).sum())
