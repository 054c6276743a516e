"""The blend's second stage: label statistics and candidate features by hand, the trees as arrays against
scikit-learn's own prediction, out-of-fold scores, and a re-ranking ensemble that travels as one artifact."""

from __future__ import annotations

import math

import numpy as np
import pytest

from patentml.rerank import FEATURES, MEMBER_FEATURES, LabelStats, Trees, candidate_features, fit_out_of_fold
from tests.test_variants import fit_in_memory, snapshot, toy_corpora  # noqa: F401 (snapshot: a fixture)

LABELS = ["A01B", "A01C", "H04L"]


def stats_by_hand() -> LabelStats:
    truth = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0]], dtype=bool)
    return LabelStats.from_labels(truth, LABELS)


def test_label_stats_by_hand() -> None:
    s = stats_by_hand()
    # Counts 3, 2, 1 of 4 patents, add-one: (c + 1) / 6.
    assert np.allclose(np.exp(s.log_prior), [4 / 6, 3 / 6, 2 / 6])
    # P(A01C | A01B): 2 co-occurrences + prior(A01C) 0.5, over count(A01B) 3 + 1.
    assert math.isclose(s.cond[0, 1], (2 + 0.5) / 4, rel_tol=1e-6)
    # P(H04L | A01B): none together -> prior only, (0 + 2/6) / 4.
    assert math.isclose(s.cond[0, 2], (2 / 6) / 4, rel_tol=1e-6)
    assert np.all(np.diag(s.cond) == 0)
    assert s.section.tolist() == [0, 0, 1] and s.klass.tolist() == [0, 0, 1]


def test_candidate_features_by_hand() -> None:
    s = stats_by_hand()
    member = np.array([[0.2, 0.8, 0.4], [0.9, 0.1, 0.5]], dtype=np.float32)
    other = np.array([[0.9, 0.1, 0.3], [0.1, 0.2, 0.3]], dtype=np.float32)
    blend = (member + other) / 2  # [0.55, 0.45, 0.35], [0.5, 0.15, 0.4]
    order, x = candidate_features([member, other], blend, s, depth=2)
    assert order.tolist() == [[0, 1], [0, 2]]
    assert x.shape == (4, len(FEATURES) + 2 * len(MEMBER_FEATURES))
    col = {name: i for i, name in enumerate(FEATURES)}
    patent0, patent1 = x[:2], x[2:]
    assert np.allclose(patent0[:, col["blend"]], [0.55, 0.45]) and patent0[:, col["rank"]].tolist() == [0, 1]
    assert np.allclose(patent0[:, col["share_of_top"]], [1.0, 0.45 / 0.55])
    assert np.allclose(patent1[:, col["second"]], [0.4, 0.4])
    # Patent 0's candidates A01B and A01C share section and class; patent 1's A01B and H04L neither.
    assert patent0[:, col["same_class"]].tolist() == [1, 1] and patent1[:, col["same_section"]].tolist() == [1, 0]
    assert np.allclose(patent0[:, col["class_rest"]], [0.45, 0.55]) and np.allclose(patent1[:, col["class_rest"]], 0)
    assert np.allclose(patent0[:, col["cooc_top1"]], [0.0, s.cond[0, 1]])
    # Co-occurrence support over the (two) best candidates: 0.55 x P(A01C | A01B) for A01C.
    assert np.allclose(patent0[:, col["cooc_top5"]], [0.45 * s.cond[1, 0], 0.55 * s.cond[0, 1]])
    assert patent1[:, col["n_near_top"]].tolist() == [2, 2]  # 0.4 >= half of 0.5
    # The first member's score and rank: patent 0 scores A01B 0.2 (third of three), A01C 0.8 (first).
    first = len(FEATURES)
    assert np.allclose(patent0[:, first], [0.2, 0.8]) and patent0[:, first + 1].tolist() == [2, 0]


def test_trees_predict_as_scikit_learn_does_and_travel_as_arrays() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from patentml.rerank import TREE_PARAMS

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5)).astype(np.float32)
    y = x[:, 0] * x[:, 1] + x[:, 2] + 0.3 * rng.normal(size=2000) > 0
    trees = Trees.fit(x, y, seed=0)
    sk = HistGradientBoostingClassifier(**TREE_PARAMS, early_stopping=False, random_state=0).fit(x, y)
    probe = rng.normal(size=(300, 5))
    probe[:5, 2] = np.nan  # missing values follow the side the trees learned
    assert np.allclose(trees.predict(probe, chunk=64), sk.predict_proba(probe)[:, 1], atol=1e-12)
    again = Trees.from_arrays(trees.arrays())
    assert np.array_equal(again.predict(probe), trees.predict(probe))
    # Nothing to split on: every tree is one leaf, and the prediction is the training rate.
    flat = Trees.fit(np.zeros((200, 2)), np.arange(200) % 4 == 0, seed=0)
    assert (flat.left == 0).all() and np.allclose(flat.predict(np.zeros((3, 2))), 0.25)


def test_out_of_fold_scores_come_from_trees_that_never_saw_the_row() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 4))
    y = rng.random(3000) < 0.3  # noise: nothing to learn, only to memorise
    final, held_out = fit_out_of_fold(x, y, n_patents=100, folds=5, seed=0)
    assert roc_auc_score(y, final.predict(x)) > 0.75  # the trees memorise their own rows ...
    assert abs(roc_auc_score(y, held_out) - 0.5) < 0.06  # ... and know nothing of rows they never saw


@pytest.fixture(scope="module")
def reranked(tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("rerank")
    tf = fit_in_memory("tfidf", tmp / "tf", {"min_df": 1})
    svm = fit_in_memory("tfidf-svm", tmp / "svm", {"min_df": 1})
    ens = fit_in_memory("ensemble", tmp / "ens", {"rerank_min_patents": 20, "rerank_depth": 4, "rerank_min_gain": -1.0},
                        members=[(11, tf), (12, svm)])
    return ens, tmp


def test_a_reranking_blend_travels_as_one_artifact(reranked) -> None:  # type: ignore[no-untyped-def]
    from patentml.variants.base import load_backend

    ens, tmp = reranked
    assert ens.trees is not None and ens.members
    ens.save(tmp / "model")
    model = load_backend(tmp / "model")
    _, _, test, labels = toy_corpora()
    texts = [t for _, t, _ in test]
    scores = model.predict_scores(texts)
    assert np.array_equal(scores, ens.predict_scores(texts))
    # Only each patent's four best blend labels have a score; the re-ranker's probabilities are not the blend's.
    assert ((scores > 0).sum(axis=1) <= 4).all() and len(labels) > 4
    blend, final = model.combine(model.member_scores(texts))
    assert np.array_equal(final, scores) and not np.allclose(blend, final)
    top = np.argsort(-blend, axis=1)[:, :4]
    assert np.all(np.take_along_axis(scores, top, axis=1) > 0)
    why = model.explain(texts[:1], [[labels[int(np.argmax(scores[0]))]]])[0]
    reason = next(iter(why.values()))
    assert reason["reranked"] and math.isclose(reason["score"], float(scores[0].max()), abs_tol=1e-4)


def test_the_rule_is_chosen_on_out_of_fold_scores(reranked) -> None:  # type: ignore[no-untyped-def]
    ens, _ = reranked
    _, valid, _, _ = toy_corpora()
    texts = [t for _, t, _ in valid]
    held_out = ens.rule_scores(texts)
    # The validation patents the trees were fitted on: held-out scores, not the trees' own (too good) ones.
    assert not np.allclose(held_out, ens.predict_scores(texts))
    # Any other texts: the model's scores.
    assert np.array_equal(ens.rule_scores(texts[:5]), ens.predict_scores(texts[:5]))


@pytest.mark.parametrize("params, why", [({}, "60 validation patents < rerank_min_patents=100"),
                                          ({"rerank_min_patents": 20}, "the blend's validation F1 is 1.0")])
def test_the_plain_blend_is_kept_when_reranking_cannot_help(params, why, tmp_path):  # type: ignore[no-untyped-def]
    tf = fit_in_memory("tfidf", tmp_path / "tf", {"min_df": 1})
    svm = fit_in_memory("tfidf-svm", tmp_path / "svm", {"min_df": 1})
    ens = fit_in_memory("ensemble", tmp_path / "ens", params, members=[(11, tf), (12, svm)])
    assert ens.trees is None, why
    texts = ["gear shaft clutch", "heterocyclic compound salt"]
    expected = sum(w * m.predict_scores(texts) for w, m in zip(ens.weights, ens.members))
    assert np.allclose(ens.predict_scores(texts), expected, atol=1e-6)
