"""The peers and the blend: TF-IDF+SVM, sentence embeddings + head (cached by text hash), the ensemble."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from patentml.evaluate import evaluate_run
from patentml.ingest import ingest
from patentml.splits import rebuild
from patentml.train import artifact_path, train
from patentml.variants import known_variants, parse_variant
from patentml.variants.base import load_backend
from patentml.variants.ensemble import simplex_grid
from tests.toy import write_toy_jsonl


@pytest.fixture(scope="module")
def snapshot(engine, settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("toy")
    ingest(engine, [str(write_toy_jsonl(folder / "toy.jsonl", n=300, seed=3))])
    return rebuild(engine, settings.label_scheme).snapshot_id


def test_variant_names_parse_from_the_right() -> None:
    assert parse_variant("embed-linear-full").encoder == "embed-linear"
    assert parse_variant("tfidf-svm-subset").dataset == "subset"
    assert parse_variant("glove-wbce-full").loss == "wbce"
    assert {"ensemble-full", "tfidf-svm-full", "bert-bce-subset"} <= set(known_variants())


def test_simplex_grid_by_hand() -> None:
    assert simplex_grid(2, 0.5) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    assert len(simplex_grid(3, 0.1)) == 66  # C(10 + 2, 2)
    assert all(abs(sum(w) - 1) < 1e-9 for w in simplex_grid(3, 0.1))


def test_tfidf_svm_ranks_and_thresholds(engine, settings, snapshot) -> None:
    run_id = train("tfidf-svm-full", settings, overrides={"min_df": 1}, engine=engine)
    summary = evaluate_run(engine, run_id, settings)
    assert summary["rules"]["tuned"]["p_at_1"] > 0.8 and summary["rules"]["tuned"]["f1"] > 0.6
    # Per-patent scores from the stored predictions add up to the run's metrics (for report --compare).
    from patentml.report import compare_runs, per_patent_scores

    per = per_patent_scores(engine, run_id)
    chosen = summary["rules"]["per_label" if summary["chosen_rule"] == "per_label" else "tuned"]
    assert len(per) == summary["n_patents"]
    assert np.mean([f for f, _ in per.values()]) == pytest.approx(chosen["f1"], abs=1e-6)
    assert np.mean([p for _, p in per.values()]) == pytest.approx(chosen["p_at_1"], abs=1e-6)
    assert "| example F1 |" in compare_runs(engine, run_id, run_id, n=50) and "+0.0 .. +0.0" in compare_runs(
        engine, run_id, run_id, n=50)


def test_paired_bootstrap_by_hand() -> None:
    from patentml.report import paired_bootstrap

    same = paired_bootstrap(np.array([1.0, 0.0, 1.0]), np.array([1.0, 0.0, 1.0]), n=100)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "sd": 0.0}
    shifted = paired_bootstrap(np.array([0.5, 0.7, 0.9]), np.array([0.4, 0.6, 0.8]), n=100)
    assert shifted["diff"] == pytest.approx(0.1) and shifted["low"] == pytest.approx(0.1)
    assert shifted["high"] == pytest.approx(0.1)
    mixed = paired_bootstrap(np.array([1.0, 0.0] * 50), np.zeros(100), n=500)
    assert mixed["diff"] == pytest.approx(0.5) and mixed["low"] < 0.5 < mixed["high"] and 0.02 < mixed["sd"] < 0.08


def test_embed_linear_caches_vectors_by_text_hash(engine, settings, snapshot) -> None:
    tiny = {"max_length": 32, "epochs": 15}
    first = train("embed-linear-full", settings, overrides=tiny, engine=engine)
    with engine.connect() as conn:
        cached = conn.execute(text("SELECT count(*) FROM text_embeddings")).scalar()
        n_docs = conn.execute(text("SELECT count(*) FROM snapshot_members WHERE snapshot_id = :s AND split IN "
                                   "('train', 'valid')"), {"s": snapshot}).scalar()
    assert cached == n_docs  # one vector per distinct training/validation text
    second = train("embed-linear-full", settings, overrides=tiny, seed=1, engine=engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM text_embeddings")).scalar() == cached
    summary = evaluate_run(engine, second, settings)
    assert summary["rules"]["tuned"]["p_at_1"] > 0.6
    model = load_backend(artifact_path(engine, first))
    again = load_backend(artifact_path(engine, first))
    texts = ["a network packet router", "maize seed"]
    assert np.allclose(model.predict_scores(texts), again.predict_scores(texts))


def test_ensemble_blends_members_and_travels_as_one_artifact(engine, settings, snapshot) -> None:
    tf = train("tfidf-full", settings, overrides={"min_df": 1}, engine=engine)
    glove = train("glove-wbce-full", settings, epochs=2, batch_size=16,
                  overrides={"glove_path": "random", "embed_dim": 16, "num_filters": 8, "hidden": 16}, engine=engine)
    ens = train("ensemble-full", settings, overrides={"member_runs": [tf, glove]}, engine=engine)
    folder = artifact_path(engine, ens)
    model = load_backend(folder)
    assert model.member_runs and set(model.member_runs) <= {tf, glove}
    assert abs(sum(model.weights) - 1) < 1e-9
    texts = ["gear shaft clutch", "heterocyclic compound salt"]
    expected = sum(w * load_backend(artifact_path(engine, r)).predict_scores(texts)
                   for w, r in zip(model.weights, model.member_runs))
    assert np.allclose(model.predict_scores(texts), expected, atol=1e-6)
    summary = evaluate_run(engine, ens, settings)
    with engine.connect() as conn:
        tf_f1 = conn.execute(text("SELECT f1 FROM run_metrics WHERE run_id = :r AND rule = 'tuned'"), {"r": tf}).scalar()
    if tf_f1 is None:
        tf_f1 = evaluate_run(engine, tf, settings)["rules"]["tuned"]["f1"]
    # Weights are chosen on validation; on this separable toy the blend is at least nearly as good.
    assert summary["rules"]["tuned"]["f1"] >= tf_f1 - 0.05


def test_knn_scores_by_hand() -> None:
    import scipy.sparse as sp

    from patentml.variants.embed import knn_scores

    memory = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    labels = sp.csr_matrix(np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32))
    query = np.array([[0.8, 0.6]], dtype=np.float32)  # similarities 0.8, 0.96, 0.6
    # k=2 keeps memory rows 1 and 0; power 1 weights 0.96 and 0.8 (sum 1.76).
    assert np.allclose(knn_scores(query, memory, labels, k=2, power=1.0), [[1.0, 0.96 / 1.76]], atol=1e-6)
    # k=3, power 2: weights 0.64, 0.9216, 0.36 (sum 1.9216).
    expected = [[(0.64 + 0.9216) / 1.9216, (0.9216 + 0.36) / 1.9216]]
    assert np.allclose(knn_scores(query, memory, labels, k=3, power=2.0), expected, atol=1e-6)
    # Negative similarity counts as none.
    assert np.allclose(knn_scores(-query, memory, labels, k=1, power=1.0), [[0.0, 0.0]])


def test_greedy_member_selection_by_hand() -> None:
    from patentml.variants.ensemble import select_members

    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    # Member 0 ranks docs 0-1 right and is unsure on 2-3; member 1 the other way round; member 2 is noise.
    a = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.45], [0.5, 0.45]], dtype=np.float32)
    b = np.array([[0.45, 0.5], [0.45, 0.5], [0.1, 0.9], [0.1, 0.9]], dtype=np.float32)
    noise = np.array([[0.2, 0.8], [0.2, 0.8], [0.8, 0.2], [0.8, 0.2]], dtype=np.float32)
    chosen, weights, f1 = select_members(truth, [noise, a, b], step=0.5, max_members=3, min_gain=0.01)
    # Alone, a and b each get two of four patents right (F1 0.5 at best); 0.5/0.5 gets all four.
    assert sorted(chosen) == [1, 2] and weights == [0.5, 0.5] and f1 == pytest.approx(1.0)
    assert select_members(truth, [noise, a, b], step=0.5, max_members=1, min_gain=0.01)[0] in ([1], [2])


def test_hybrid_knn_chooses_k_on_validation_and_round_trips(engine, settings, snapshot) -> None:
    run_id = train("embed-knn-full", settings, overrides={"max_length": 32, "k_grid": [3, 5], "power_grid": [1.0],
                                                             "text_weight_grid": [0.5], "min_df": 1}, engine=engine)
    folder = artifact_path(engine, run_id)
    model = load_backend(folder)
    assert model.params["k"] in (3, 5) and model.params["power"] == 1.0 and model.params["text_weight"] == 0.5
    assert model.text_memory is not None and model.text_memory.shape[0] == model.memory.shape[0]
    summary = evaluate_run(engine, run_id, settings)
    assert summary["rules"]["tuned"]["p_at_1"] > 0.6
    texts = ["a network packet router", "maize seed"]
    fresh = load_backend(folder)
    assert np.allclose(model.predict_scores(texts), fresh.predict_scores(texts), atol=1e-6)
    assert ((model.predict_scores(texts) >= 0) & (model.predict_scores(texts) <= 1 + 1e-6)).all()


def test_embed_linear_fine_tunes_the_encoder_and_reloads_it(engine, settings, snapshot) -> None:
    tiny = {"max_length": 24, "epochs": 3, "hidden": 0, "fine_tune": True, "fine_tune_epochs": 1,
            "encoder_lr": 1e-3, "fine_tune_batch_size": 16, "fine_tune_select": "last"}
    run_id = train("embed-linear-full", settings, overrides=tiny, engine=engine)
    folder = artifact_path(engine, run_id)
    model = load_backend(folder)
    texts = ["a network packet router", "maize seed"]
    assert model.params["fine_tune"]
    # The tuned weights travel in the artifact and are named apart from the base encoder's vectors.
    assert (folder / "encoder" / "model.safetensors").exists()
    assert model.params["encoder_tag"].startswith("ft-")
    base = load_backend(artifact_path(engine, train("embed-linear-full", settings, overrides={**tiny, "fine_tune": False},
                                                    engine=engine)))
    assert model._encoder().key != base._encoder().key
    assert not np.allclose(model._encoder().encode(texts), base._encoder().encode(texts), atol=1e-4)
    assert np.allclose(model.predict_scores(texts), load_backend(folder).predict_scores(texts), atol=1e-5)


def test_ensemble_settings_are_checked() -> None:
    from patentml.exceptions import ConfigError
    from patentml.variants.ensemble import Ensemble

    for bad in ({"weight_step": 0}, {"weight_step": 0.3}, {"weight_step": "x"}, {"max_members": 0}):
        with pytest.raises(ConfigError):
            Ensemble(["A01B"], bad)
    assert Ensemble(["A01B"], {"weight_step": 0.25}).params["weight_step"] == 0.25
