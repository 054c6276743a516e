"""Training and evaluation end to end on a tiny separable corpus: real runs, rows in Postgres, artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text

from patentml.evaluate import evaluate_run
from patentml.ingest import ingest
from patentml.splits import rebuild
from patentml.train import artifact_path, resume, train
from patentml.variants.base import load_backend
from tests.toy import TOPICS, write_toy_jsonl

TINY = {"num_filters": 16, "hidden": 32, "embed_dim": 16, "glove_path": "random", "eval_batch_size": 64}


@pytest.fixture(scope="module")
def snapshot(engine, settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("toy")
    ingest(engine, [str(write_toy_jsonl(folder / "toy.jsonl", n=360))])
    return rebuild(engine, settings.label_scheme).snapshot_id


@pytest.fixture(scope="module")
def glove_run(engine, settings, snapshot):  # type: ignore[no-untyped-def]
    run_id = train("glove-wbce-full", settings, epochs=4, batch_size=16, lr=3e-3, overrides=TINY, engine=engine)
    evaluate_run(engine, run_id, settings)
    return run_id


def _constant_f1(engine, run_id: int) -> float:  # type: ignore[no-untyped-def]
    """Example F1 of always predicting the most frequent training label, from the stored test truths."""
    with engine.connect() as conn:
        truths = [r[0] for r in conn.execute(text("SELECT true_labels FROM predictions WHERE run_id = :r"), {"r": run_id})]
        top = conn.execute(
            text("SELECT sl.subclass FROM snapshot_labels sl JOIN runs r ON r.snapshot_id = sl.snapshot_id "
                 "AND sl.dataset = r.dataset WHERE r.run_id = :r ORDER BY n_train DESC, subclass LIMIT 1"),
            {"r": run_id},
        ).scalar()
    return float(np.mean([2.0 * (top in t) / (1 + len(t)) for t in truths]))


def test_glove_run_learns_and_records_everything(engine, glove_run) -> None:
    with engine.connect() as conn:
        run = conn.execute(text("SELECT * FROM runs WHERE run_id = :r"), {"r": glove_run}).mappings().one()
        epochs = conn.execute(text("SELECT epoch, train_loss, valid_loss, valid_f1 FROM run_epochs "
                                   "WHERE run_id = :r ORDER BY epoch"), {"r": glove_run}).all()
        # predictions are stored under the rule the model applies (tuned, or per_label when it won)
        tuned = conn.execute(text("SELECT m.* FROM run_metrics m JOIN runs r USING (run_id) WHERE run_id = :r "
                                  "AND split = 'test' AND m.rule = r.rule"),
                             {"r": glove_run}).mappings().one()
        preds = conn.execute(text("SELECT true_labels, pred_labels FROM predictions WHERE run_id = :r"),
                             {"r": glove_run}).all()
        sections = conn.execute(text("SELECT count(*) FROM section_metrics WHERE run_id = :r"), {"r": glove_run}).scalar()
    assert run["status"] == "succeeded" and run["loss"] == "wbce" and run["device"] == "cpu"
    assert run["n_params"] > 0 and run["settings"]["num_filters"] == 16 and run["settings"]["alpha"] == 2.0
    assert [e[0] for e in epochs] == list(range(1, run["epochs_done"] + 1))
    assert epochs[-1][1] < epochs[0][1], "training loss must go down"
    assert tuned["f1"] > _constant_f1(engine, glove_run) + 0.2
    # The stored tuned F1 is the mean over test patents of 2|pred & true| / (|pred| + |true|).
    by_hand = np.mean([2 * len(set(p) & set(t)) / (len(p) + len(t)) for t, p in preds])
    assert tuned["f1"] == pytest.approx(by_hand, abs=1e-9)
    assert tuned["n_patents"] == len(preds) and sections >= 1


def test_artifact_round_trip_gives_identical_scores(engine, settings, glove_run) -> None:
    from patentml.artifact import file_sha256

    folder = artifact_path(engine, glove_run)
    model = load_backend(folder)
    texts = [TOPICS["G06F"], TOPICS["H04L"] + " " + TOPICS["G06F"]]
    again = load_backend(folder).predict_scores(texts)
    assert np.array_equal(model.predict_scores(texts), again)
    assert model.labels[int(again[0].argmax())] == "G06F"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["run_id"] == glove_run and manifest["variant"] == "glove-wbce-full"
    assert not any(p.suffix in (".pkl", ".pickle", ".pt") for p in folder.rglob("*"))
    # Artifacts stay as trained: evaluating again writes rows, not files, so the model id cannot change.
    before = {p: file_sha256(p) for p in folder.rglob("*") if p.is_file()}
    evaluate_run(engine, glove_run, settings)
    assert {p: file_sha256(p) for p in folder.rglob("*") if p.is_file()} == before
    assert "metrics.json" not in manifest["files"]


def test_runs_settings_hold_what_fit_resolved(engine, settings, glove_run) -> None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT settings, rule, decision_rule FROM runs WHERE run_id = :r"),
                           {"r": glove_run}).mappings().one()
    assert row["settings"]["loss"] == "wbce" and row["settings"]["epochs"] == 4 and row["settings"]["lr"] == 3e-3
    from patentml.decision import rule_name

    assert row["rule"] == rule_name(row["decision_rule"])


def test_interrupted_run_resumes_from_its_checkpoint(engine, settings, snapshot, monkeypatch) -> None:
    import patentml.nn.loop as loop

    real_save = loop._atomic_torch_save
    calls = {"n": 0}

    def interrupt_on_second_epoch(obj, path):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_save(obj, path)

    monkeypatch.setattr(loop, "_atomic_torch_save", interrupt_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train("glove-bce-full", settings, epochs=3, batch_size=16, overrides=TINY | {"patience": 5}, engine=engine)
    with engine.connect() as conn:
        run_id, status, done = conn.execute(
            text("SELECT run_id, status, epochs_done FROM runs ORDER BY run_id DESC LIMIT 1")).one()
    assert status == "interrupted" and done == 1
    monkeypatch.setattr(loop, "_atomic_torch_save", real_save)
    assert resume(run_id, settings, engine=engine) == run_id
    with engine.connect() as conn:
        status, done = conn.execute(text("SELECT status, epochs_done FROM runs WHERE run_id = :r"), {"r": run_id}).one()
        epochs = conn.execute(text("SELECT epoch FROM run_epochs WHERE run_id = :r ORDER BY epoch"), {"r": run_id}).scalars().all()
    assert status == "succeeded" and done == 3 and epochs == [1, 2, 3]


def test_tfidf_run_and_its_transform_match_scikit_learn(engine, settings, snapshot) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    run_id = train("tfidf-full", settings, overrides={"min_df": 1}, engine=engine)
    summary = evaluate_run(engine, run_id, settings)
    assert summary["rules"]["tuned"]["p_at_1"] > 0.8
    model = load_backend(artifact_path(engine, run_id))
    texts = ["Gear shaft with planetary clutch.", "A network packet router; encryption of the packet!", ""]
    reference = TfidfVectorizer(vocabulary=model.vocabulary, tokenizer=lambda t: __import__("patentml.text").text.tokenize(t),
                                token_pattern=None, lowercase=False, ngram_range=(1, 2), sublinear_tf=True)
    reference.idf_ = model.idf
    assert np.allclose(model.transform(texts).toarray(), reference.transform(texts).toarray(), atol=1e-6)


def test_bert_frozen_path_on_the_packaged_encoder(engine, settings, snapshot) -> None:
    tiny = {"num_filters": 8, "hidden": 16, "bert_max_length": 32, "encode_batch_size": 16}
    run_id = train("bert-wbce-subset", settings, epochs=1, batch_size=8, overrides=tiny, engine=engine)
    cache = list((settings.cache_dir / "bert-vectors").iterdir())
    assert cache, "frozen token vectors are cached per snapshot"
    # A second run on the same snapshot reuses the cached vectors instead of encoding again.
    stamp = {p: p.stat().st_mtime for p in cache}
    train("bert-bce-subset", settings, epochs=1, batch_size=8, overrides=tiny, engine=engine)
    assert {p: p.stat().st_mtime for p in cache} == stamp
    model = load_backend(artifact_path(engine, run_id))
    scores = model.predict_scores(["a gear shaft", "plant seed"])
    assert scores.shape == (2, len(model.labels)) and np.all((scores >= 0) & (scores <= 1))


def test_bert_fine_tune_path_runs_one_tiny_epoch(engine, settings, snapshot) -> None:
    tiny = {"num_filters": 8, "hidden": 16, "bert_max_length": 16, "fine_tune": True}
    run_id = train("bert-wbce-subset", settings, epochs=1, batch_size=8, overrides=tiny, engine=engine)
    folder = artifact_path(engine, run_id)
    assert (folder / "encoder" / "model.safetensors").exists(), "a fine-tuned encoder travels with the model"
    assert load_backend(folder).predict_scores(["network packet"]).shape[0] == 1


def test_unknown_setting_and_bad_variant_are_refused_before_a_run_exists(engine, settings, snapshot) -> None:
    from patentml.exceptions import ConfigError

    with engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM runs")).scalar()
    with pytest.raises(ConfigError, match="unknown setting"):
        train("glove-wbce-full", settings, overrides={"nmu_filters": 3}, engine=engine)
    with pytest.raises(ConfigError, match="needs a loss"):
        train("glove-full", settings, engine=engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == before


def test_runs_of_killed_processes_are_marked_interrupted(engine, snapshot) -> None:
    import socket
    import subprocess

    from patentml.train import mark_stale_runs

    dead = subprocess.Popen(["true"])
    dead.wait()
    with engine.begin() as conn:
        run_id = conn.execute(
            text("INSERT INTO runs (variant, encoder, dataset, snapshot_id, status, settings, seed, host, pid) "
                 "VALUES ('tfidf-full', 'tfidf', 'full', :s, 'running', '{}', 0, :h, :p) RETURNING run_id"),
            {"s": snapshot, "h": socket.gethostname(), "p": dead.pid},
        ).scalar_one()
    assert mark_stale_runs(engine) >= 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM runs WHERE run_id = :r"), {"r": run_id}).scalar() == "interrupted"


def test_a_retry_on_another_host_resumes_from_the_store(engine, settings, snapshot, tmp_path, monkeypatch,
                                                         caplog) -> None:
    """Try 1 dies after epoch 2 on host A and its disk is lost; try 2 on host B continues the same run at epoch 3."""
    import dataclasses
    import logging
    import shutil

    import patentml.runstore as runstore
    from patentml.db.runs import RunOrigin
    from patentml.store import open_store

    origin = RunOrigin("patent_retrain", "manual__resume", "variant.train", 3, 1)
    real_save, saved = runstore.StoreCheckpoints.save, []

    def lost_after_two_epochs(self, files):  # type: ignore[no-untyped-def]
        real_save(self, files)
        saved.append(files)
        if len(saved) == 2:
            raise KeyboardInterrupt("host A is gone")

    monkeypatch.setattr(runstore.StoreCheckpoints, "save", lost_after_two_epochs)
    host_a, host_b = settings.replace(home=tmp_path / "a"), settings.replace(home=tmp_path / "b")
    kwargs = {"epochs": 4, "batch_size": 16, "overrides": TINY | {"patience": 10}, "engine": engine}
    with pytest.raises(KeyboardInterrupt):
        train("glove-bce-full", host_a, origin=origin, **kwargs)
    shutil.rmtree(host_a.home / "runs")
    monkeypatch.setattr(runstore.StoreCheckpoints, "save", real_save)
    with caplog.at_level(logging.INFO):
        run_id = train("glove-bce-full", host_b, origin=dataclasses.replace(origin, try_number=2), **kwargs)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM runs WHERE dag_run_id = 'manual__resume'")).mappings().all()
        epochs = conn.execute(text("SELECT epoch FROM run_epochs WHERE run_id = :r ORDER BY epoch"),
                              {"r": run_id}).scalars().all()
    assert [(r["run_id"], r["status"], r["try_number"], r["epochs_done"], r["map_index"]) for r in row] == [
        (run_id, "succeeded", 2, 4, 3)]
    assert epochs == [1, 2, 3, 4]
    assert "at epoch 3 (epochs 1-2 done)" in caplog.text and f"Run {run_id}: restored" in caplog.text
    assert open_store(settings).list_keys(f"checkpoints/{run_id}") == []  # cleared once the run succeeded
    # A third try after success trains nothing: it returns the same run.
    assert train("glove-bce-full", host_b, origin=dataclasses.replace(origin, try_number=3), **kwargs) == run_id
