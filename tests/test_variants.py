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
from patentml.variants.base import FitContext, ListCorpus, load_backend
from patentml.variants.ensemble import simplex_grid
from tests.toy import toy_records, write_toy_jsonl


def toy_corpora(n: int = 300, seed: int = 3) -> tuple[ListCorpus, ListCorpus, ListCorpus, list[str]]:
    """Train/valid/test lists of the toy corpus and its label space: backends that need no database get these."""
    docs = [(r["id"], r["abstract"], r["labels"]) for r in toy_records(n, seed)]
    train, valid, test = docs[: n * 6 // 10], docs[n * 6 // 10 : n * 8 // 10], docs[n * 8 // 10 :]
    return ListCorpus(train), ListCorpus(valid), ListCorpus(test), sorted({l for _, _, ls in train for l in ls})


def fit_in_memory(encoder: str, tmp_path, params: dict, members=()):  # type: ignore[no-untyped-def]
    from patentml.variants import backend_class

    train_c, valid_c, _, labels = toy_corpora()
    backend = backend_class(encoder)(labels, params)
    backend.fit(train_c, valid_c, FitContext(work_dir=tmp_path, members=list(members)))
    return backend


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


def test_tfidf_svm_ranks_in_memory(tmp_path) -> None:
    from patentml.metrics import at_k
    from patentml.labels import multi_hot

    model = fit_in_memory("tfidf-svm", tmp_path, {"min_df": 1})
    _, _, test, _ = toy_corpora()
    texts, truth = [t for _, t, _ in test], multi_hot([ls for _, _, ls in test], model.labels) > 0
    assert at_k(truth, model.predict_scores(texts), ks=(1,))["p@1"] > 0.8
    model.save(tmp_path / "model")
    assert np.allclose(load_backend(tmp_path / "model").predict_scores(texts), model.predict_scores(texts))


@pytest.mark.parametrize("encoder", ["tfidf", "tfidf-svm"])
def test_a_label_no_training_patent_carries_never_fires(encoder: str, tmp_path) -> None:
    from patentml.variants import backend_class

    train_c, valid_c, test, labels = toy_corpora()
    model = backend_class(encoder)([*labels, "Z99Z"], {"min_df": 1})  # a label space from elsewhere (a fold)
    model.fit(train_c, valid_c, FitContext(work_dir=tmp_path))
    scores = model.predict_scores([t for _, t, _ in test])
    assert scores[:, -1].max() < 1e-6 and scores[:, :-1].max() > 0.5


def test_per_patent_scores_add_up_and_compare_two_runs(engine, settings, snapshot) -> None:
    svm = train("tfidf-svm-full", settings, overrides={"min_df": 1}, engine=engine)
    weak = train("tfidf-full", settings, overrides={"min_df": 1, "C": 0.01}, engine=engine)
    summary = evaluate_run(engine, svm, settings)
    weak_summary = evaluate_run(engine, weak, settings)
    # Per-patent scores from the stored predictions add up to the run's own-rule metrics (report --compare).
    from patentml.report import compare_runs, per_patent_scores

    per, chosen = per_patent_scores(engine, svm), summary["rules"][summary["rule"]]
    assert len(per) == summary["n_patents"]
    assert np.mean([f for f, _ in per.values()]) == pytest.approx(chosen["f1"], abs=1e-6)
    assert np.mean([p for _, p in per.values()]) == pytest.approx(chosen["p_at_1"], abs=1e-6)
    table = compare_runs(engine, svm, weak, n=200)
    weak_f1 = weak_summary["rules"][weak_summary["rule"]]["f1"]
    row = next(line for line in table.splitlines() if line.startswith("| example F1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{100 * chosen['f1']:.1f}" and cells[2] == f"{100 * weak_f1:.1f}"
    assert float(cells[3]) == pytest.approx(100 * (chosen["f1"] - weak_f1), abs=0.11)


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


def test_ensemble_blends_the_members_it_is_handed_and_travels_as_one_artifact(tmp_path) -> None:
    tf = fit_in_memory("tfidf", tmp_path / "tf", {"min_df": 1})
    glove = fit_in_memory("glove", tmp_path / "glove", {"loss": "wbce", "epochs": 2, "batch_size": 16,
                                                        "glove_path": "random", "embed_dim": 16, "num_filters": 8,
                                                        "hidden": 16})
    ens = fit_in_memory("ensemble", tmp_path / "ens", {}, members=[(11, tf), (12, glove)])
    ens.save(tmp_path / "ens" / "model")
    model = load_backend(tmp_path / "ens" / "model")
    assert model.member_runs and set(model.member_runs) <= {11, 12}
    assert abs(sum(model.weights) - 1) < 1e-9
    texts = ["gear shaft clutch", "heterocyclic compound salt"]
    by_run = {11: tf, 12: glove}
    expected = sum(w * by_run[r].predict_scores(texts) for w, r in zip(model.weights, model.member_runs))
    assert np.allclose(model.predict_scores(texts), expected, atol=1e-6)


def test_ensemble_members_come_from_finished_runs(engine, settings, snapshot) -> None:
    tf = train("tfidf-full", settings, overrides={"min_df": 1}, engine=engine)
    svm = train("tfidf-svm-full", settings, overrides={"min_df": 1}, engine=engine)
    ens = train("ensemble-full", settings, overrides={"member_runs": [tf, svm]}, engine=engine)
    model = load_backend(artifact_path(engine, ens))
    assert set(model.member_runs) <= {tf, svm}
    from patentml.exceptions import DataError

    with pytest.raises(DataError, match="do not exist or did not succeed"):
        train("ensemble-full", settings, overrides={"member_runs": [tf, 999_999]}, engine=engine)


def test_knn_scores_by_hand() -> None:
    import scipy.sparse as sp

    from patentml.knn import knn_scores

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
    # Row weights: memory row 1's vote halved -> weights 0.48 and 0.8 (sum 1.28) for rows 1 and 0.
    from patentml.knn import vote

    idx, sims = np.array([[1, 0]]), np.array([[0.96, 0.8]], dtype=np.float32)
    assert np.allclose(vote(idx, sims, labels, 1.0, np.array([1.0, 0.5, 1.0])), [[1.0, 0.48 / 1.28]], atol=1e-6)


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


def test_hybrid_knn_learns_k_on_validation_as_artifact_state(tmp_path) -> None:
    model = fit_in_memory("embed-knn", tmp_path, {"max_length": 32, "k_grid": [3, 5], "power_grid": [1.0],
                                                   "text_weight_grid": [0.5], "min_df": 1})
    # What fit chose is state, not a rewritten setting: the settings still say "auto".
    assert model.params["k"] == "auto" and model.learned["k"] in (3, 5)
    assert model.learned["power"] == 1.0 and model.learned["text_weight"] == 0.5
    assert model.resolved_params()["k"] == model.learned["k"]
    assert model.text_memory is not None and model.text_memory.shape[0] == model.memory.shape[0]
    model.save(tmp_path / "model")
    fresh = load_backend(tmp_path / "model")
    assert fresh.learned == model.learned and fresh.params["k"] == "auto"
    texts = ["a network packet router", "maize seed"]
    assert np.allclose(model.predict_scores(texts), fresh.predict_scores(texts), atol=1e-6)
    assert ((model.predict_scores(texts) >= 0) & (model.predict_scores(texts) <= 1 + 1e-6)).all()


def test_knn_above_the_ann_threshold_searches_an_hnsw_index_saved_in_the_artifact(tmp_path) -> None:
    """A memory larger than ann_threshold goes through faiss HNSW: on a toy memory it finds the exact
    neighbours, so the scores equal exact search's; the index is an artifact file read back without pickle."""
    pytest.importorskip("faiss", reason="needs faiss-cpu")
    from patentml.variants.embed import ANN_FILE

    params = {"max_length": 32, "k": 3, "power": 1.0, "text_weight": 0.0}
    exact = fit_in_memory("embed-knn", tmp_path / "a", params)
    approx = fit_in_memory("embed-knn", tmp_path / "b", {**params, "ann_threshold": 5})
    assert exact._index().kind == "exact" and approx._index().kind == "hnsw"
    texts = ["a network packet router", "maize seed", "a turbine blade coating"]
    assert np.allclose(exact.predict_scores(texts), approx.predict_scores(texts), atol=1e-3)
    exact.save(tmp_path / "exact")
    approx.save(tmp_path / "approx")
    assert not (tmp_path / "exact" / ANN_FILE).exists() and (tmp_path / "approx" / ANN_FILE).is_file()
    fresh = load_backend(tmp_path / "approx")
    assert fresh._index().kind == "hnsw" and len(fresh._index()) == len(approx.memory)
    assert np.allclose(fresh.predict_scores(texts), approx.predict_scores(texts), atol=1e-6)


def test_knn_run_records_the_resolved_settings(engine, settings, snapshot) -> None:
    run_id = train("embed-knn-full", settings, overrides={"max_length": 32, "k_grid": [3, 5], "power_grid": [1.0],
                                                             "text_weight_grid": [0.0]}, engine=engine)
    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT settings FROM runs WHERE run_id = :r"), {"r": run_id}).scalar()
    assert recorded["k"] == load_backend(artifact_path(engine, run_id)).learned["k"] and recorded["k"] in (3, 5)
    summary = evaluate_run(engine, run_id, settings)
    assert summary["rules"][summary["rule"]]["p_at_1"] > 0.6


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
    assert model.learned["encoder_tag"].startswith("ft-")
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
