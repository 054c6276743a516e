"""Promotion against a real Postgres, ``file://`` and a real SeaweedFS S3: first, win, lose by the
margin, tie, rollback, re-scoring the champion on a new snapshot, a failure between upload and
pointer move, verification of the read-back copy, wrong credentials, and two racing promoters."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from patentml.artifact import verify_artifact
from patentml.exceptions import ArtifactError, PromotionError, StoreError
from patentml.promote import list_models, lock_key, promote, rollback, score_artifact
from patentml.settings import Settings
from patentml.store import FileModelStore, open_store

REPO = Path(__file__).resolve().parent.parent

# --- a tiny synthetic corpus: five subclasses, each with its own words ------------------------------------

VOCAB = {
    "A01B": "soil plough tillage furrow harrow seed tractor field crop cultivator tine ridge",
    "B60W": "vehicle engine brake steering torque driver wheel speed transmission throttle clutch axle",
    "C07D": "compound ring heterocyclic pyridine synthesis alkyl substituted salt derivative nitrogen amine ester",
    "G06F": "processor memory instruction cache register software data storage compiler thread kernel bus",
    "H04L": "packet network protocol router transmission node channel encryption frame header latency bandwidth",
    # Only in the corpus extension: a label the first snapshot's models have never seen.
    "F16K": "valve seat stem flow fluid closure spring bonnet gate poppet seal orifice",
}
COMMON = "the a of and to in is for with said wherein comprising device method system apparatus first second"
FIRST_FIVE = ["A01B", "B60W", "C07D", "G06F", "H04L"]


def make_patents(n: int, labels: list[str], start: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    common = COMMON.split()
    out = []
    for i in range(n):
        main = labels[i % len(labels)]
        chosen = [main]
        if rng.random() < 0.25:
            chosen.append(rng.choice([l for l in labels if l != main]))
        words = []
        for _ in range(rng.randint(30, 60)):
            r = rng.random()
            if r < 0.55:
                words.append(rng.choice(VOCAB[main].split()))
            elif r < 0.7 and len(chosen) > 1:
                words.append(rng.choice(VOCAB[chosen[1]].split()))
            else:
                words.append(rng.choice(common))
        out.append({"id": f"US{start + i}", "title": None, "abstract": " ".join(words).capitalize() + ".",
                    "labels": chosen, "label_scheme": "CPC", "date": "2015-01-01"})
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GLOVE_OVERRIDES = {"glove_path": "none", "embed_dim": 16, "num_filters": 8, "hidden": 16}


def build_trained(engine: Any, settings: Settings, workdir: Path) -> dict[str, Any]:
    """Ingest ~200 synthetic patents, build splits, train + evaluate TF-IDF and a tiny GloVe+CNN."""
    from patentml.evaluate import evaluate_run
    from patentml.ingest import ingest
    from patentml.splits import rebuild
    from patentml.train import artifact_path, train

    ingest(engine, [write_jsonl(workdir / "corpus.jsonl", make_patents(200, FIRST_FIVE, 8_000_000, seed=1))])
    snapshot = rebuild(engine, settings.label_scheme).snapshot_id
    tfidf = train("tfidf-full", settings, engine=engine)
    glove = train("glove-wbce-full", settings, epochs=2, batch_size=16, overrides=GLOVE_OVERRIDES, engine=engine)
    for run in (tfidf, glove):
        evaluate_run(engine, run, settings)
    return {"snapshot": snapshot, "tfidf": tfidf, "glove": glove,
            "artifacts": {"tfidf": artifact_path(engine, tfidf), "glove": artifact_path(engine, glove)}}


@pytest.fixture(scope="module")
def trained(engine: Any, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_trained(engine, settings, tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def champion(trained: dict[str, Any], engine: Any, settings: Settings) -> str:
    return promote(settings, [trained["tfidf"]], engine=engine)["champion_after"]


# --- helpers ---------------------------------------------------------------------------------------------


def file_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The module's database and home, with a fresh file:// store of the test's own."""
    return settings.replace(store_uri=(tmp_path / "store").as_uri())


def clone_run(engine: Any, run_id: int, f1: float, p_at_1: float, artifact: Path | None = None) -> int:
    """A copy of a trained run (same candidate artifact in the store, or ``artifact`` uploaded as its
    candidate) whose recorded test scores are chosen by the test."""
    candidate: dict[str, Any] = {"store": None, "id": None, "sha": None}
    if artifact is not None:  # put as it is: the store takes any bytes, the readers must refuse them
        from patentml.artifact import MANIFEST, file_sha256
        from patentml.settings import get_settings
        from patentml.store import CANDIDATES

        store = open_store(get_settings())
        candidate = {"store": store.uri, "id": "planted-" + uuid.uuid4().hex[:8],
                     "sha": file_sha256(artifact / MANIFEST)}
        store.put_dir(candidate["id"], artifact, CANDIDATES)
    with engine.begin() as conn:
        new = conn.execute(
            text(
                "INSERT INTO runs (variant, encoder, loss, dataset, snapshot_id, status, settings, seed, device, "
                "artifact_dir, artifact_store, artifact_id, artifact_sha256, decision_rule, rule, finished_at) "
                "SELECT variant, encoder, loss, dataset, snapshot_id, status, settings, seed, device, artifact_dir, "
                "COALESCE(:s, artifact_store), COALESCE(:i, artifact_id), COALESCE(:h, artifact_sha256), "
                "decision_rule, rule, now() FROM runs WHERE run_id = :r RETURNING run_id"
            ),
            {"r": run_id, "s": candidate["store"], "i": candidate["id"], "h": candidate["sha"]},
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO run_metrics (run_id, split, rule, threshold, keep_top, precision, recall, f1, p_at_1, "
                "r_at_1, f1_at_1, p_at_5, r_at_5, f1_at_5, mean_pred_labels, mean_true_labels, empty_share, "
                "n_patents, n_unseen_labels, predict_seconds) SELECT :n, split, rule, threshold, keep_top, "
                "precision, recall, :f1, :p1, r_at_1, f1_at_1, p_at_5, r_at_5, f1_at_5, mean_pred_labels, "
                "mean_true_labels, empty_share, n_patents, n_unseen_labels, predict_seconds FROM run_metrics "
                "WHERE run_id = :r"
            ),
            {"n": new, "r": run_id, "f1": f1, "p1": p_at_1},
        )
    return int(new)


def rows(engine: Any, store_uri: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(
            text("SELECT * FROM promotions WHERE store_uri = :u ORDER BY promotion_id"), {"u": store_uri}))


def model_row(engine: Any, model_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM models WHERE model_id = :m"), {"m": model_id}).one_or_none()


# --- tests -----------------------------------------------------------------------------------------------


def test_first_promotion_file_store(trained: dict[str, Any], engine: Any, settings: Settings,
                                    tmp_path: Path) -> None:
    s = file_settings(settings, tmp_path)
    result = promote(s, engine=engine)
    assert result["action"] == "first" and result["promoted"] is True
    assert {c["run_id"] for c in result["candidates"]} == {trained["tfidf"], trained["glove"]}
    scores = {c["run_id"]: (c["f1"], c["p_at_1"]) for c in result["candidates"]}
    best = max(scores, key=lambda r: (*scores[r], r))
    assert result["challenger_run_id"] == best
    model_id = result["champion_after"]
    store = open_store(s)
    assert store.get_pointer() == model_id and store.list_models() == [model_id]
    assert model_id.startswith(result["challenger"]["variant"] + f"-r{best}-")
    copy = store.get_dir(model_id, tmp_path / "copy")
    manifest = verify_artifact(copy)
    assert manifest["run_id"] == best and not (copy / "metrics.json").exists()  # scores live in Postgres
    row = model_row(engine, model_id)
    assert row.run_id == best and row.store_uri == store.uri and len(row.manifest_sha256) == 64
    assert row.metrics["scores"][str(trained["snapshot"])]["f1"] == pytest.approx(scores[best][0])
    (rec,) = rows(engine, store.uri)
    assert (rec.action, rec.promoted, rec.champion_before, rec.champion_after) == ("first", True, None, model_id)
    assert rec.challenger_score == pytest.approx(scores[best][0]) and rec.champion_score is None
    assert rec.metric == "example_f1" and rec.margin == s.promotion_margin and "first champion" in rec.reason
    listing = list_models(s, engine=engine)
    assert [(m["model_id"], m["champion"], m["registered"]) for m in listing] == [(model_id, True, True)]
    assert listing[0]["f1"] == pytest.approx(scores[best][0])

    again = promote(s, engine=engine)  # same candidates: the champion's own run is not a challenger
    assert again["action"] == "keep" and "already the champion" in again["reason"]
    assert store.get_pointer() == model_id and len(rows(engine, store.uri)) == 2


def test_win_lose_tie_margin_and_rollback(trained: dict[str, Any], engine: Any, settings: Settings,
                                          tmp_path: Path) -> None:
    s = file_settings(settings, tmp_path)
    store = open_store(s)
    base = trained["tfidf"]
    first = promote(s, [clone_run(engine, base, 0.60, 0.70)], engine=engine)
    assert first["action"] == "first"
    champ = first["champion_after"]

    win = promote(s, [clone_run(engine, base, 0.70, 0.70)], margin=0.05, engine=engine)
    assert win["action"] == "promote" and win["promoted"] is True
    assert win["challenger_score"] == pytest.approx(0.70) and win["champion_score"] == pytest.approx(0.60)
    assert store.get_pointer() == win["champion_after"] != champ
    assert store.pointer_info()["previous"] == champ
    champ2 = win["champion_after"]

    lose = promote(s, [clone_run(engine, base, 0.72, 0.99)], margin=0.05, engine=engine)
    assert lose["action"] == "keep" and lose["promoted"] is False
    assert "less than the margin" in lose["reason"] and "+0.0200" in lose["reason"]
    assert store.get_pointer() == champ2

    worse = promote(s, [clone_run(engine, base, 0.50, 0.99)], margin=0.0, engine=engine)
    assert worse["action"] == "keep" and "champion is better" in worse["reason"]

    tie = promote(s, [clone_run(engine, base, 0.70, 0.99)], margin=0.0, engine=engine)
    assert tie["action"] == "keep" and tie["reason"].startswith("tie")
    assert store.get_pointer() == champ2

    # Among challengers an F1 tie goes to P@1; the other selection metric ranks by P@1 first.
    a, b = clone_run(engine, base, 0.90, 0.50), clone_run(engine, base, 0.90, 0.80)
    best = promote(s, [a, b], margin=0.0, engine=engine)
    assert best["challenger_run_id"] == b and best["action"] == "promote"
    c, d = clone_run(engine, base, 0.95, 0.60), clone_run(engine, base, 0.91, 0.99)
    by_p1 = promote(s, [c, d], margin=0.0, metric="p_at_1", engine=engine)
    assert by_p1["challenger_run_id"] == d and by_p1["metric"] == "p_at_1"
    assert by_p1["action"] == "promote" and by_p1["challenger_score"] == pytest.approx(0.99)
    assert by_p1["champion_score"] == pytest.approx(0.80)  # the champion scored by the same metric
    champ4 = by_p1["champion_after"]

    back = rollback(s, engine=engine)
    assert back["action"] == "rollback" and back["champion_before"] == champ4
    assert back["champion_after"] == best["champion_after"]
    assert store.get_pointer() == best["champion_after"]
    recorded = rows(engine, store.uri)
    assert [r.action for r in recorded] == ["first", "promote", "keep", "keep", "keep", "promote", "promote",
                                            "rollback"]
    assert all(r.reason for r in recorded)
    assert all(r.challenger_score is not None and r.champion_score is not None
               for r in recorded if r.action in ("promote", "keep"))

    # The CLI: promote --rollback again, then a listing with the champion marked.
    from patentml.cli import main

    assert main(["--database-url", s.database_url, "--home", str(s.home), "--store-uri", s.store_uri,
                 "promote", "--rollback"]) == 0
    assert store.get_pointer() == champ4
    assert main(["--database-url", s.database_url, "--home", str(s.home), "--store-uri", s.store_uri,
                 "promote", str(clone_run(engine, base, 0.10, 0.10)), "--margin", "0.01"]) == 0
    assert rows(engine, store.uri)[-1].action == "keep"


def test_rollback_without_previous_is_refused(trained: dict[str, Any], engine: Any, settings: Settings,
                                              tmp_path: Path) -> None:
    s = file_settings(settings, tmp_path)
    with pytest.raises(PromotionError, match="no champion yet"):
        rollback(s, engine=engine)
    promote(s, [trained["glove"]], engine=engine)
    with pytest.raises(PromotionError, match="no previous champion"):
        rollback(s, engine=engine)


def test_failure_between_upload_and_pointer_move_keeps_old_champion(
    trained: dict[str, Any], engine: Any, settings: Settings, tmp_path: Path
) -> None:
    s = file_settings(settings, tmp_path)
    store = open_store(s)
    old = promote(s, [clone_run(engine, trained["tfidf"], 0.5, 0.5)], engine=engine)["champion_after"]
    challenger = clone_run(engine, trained["glove"], 0.9, 0.9)
    seen: list[str] = []

    def crash(model_id: str) -> None:
        seen.append(model_id)
        assert store.exists(model_id)  # uploaded and verified already
        raise RuntimeError("injected crash before the pointer move")

    with pytest.raises(RuntimeError, match="injected crash"):
        promote(s, [challenger], margin=0.0, engine=engine, _before_pointer_move=crash)
    assert store.get_pointer() == old
    assert [r.action for r in rows(engine, store.uri)] == ["first"]  # the aborted decision left no row
    assert model_row(engine, seen[0]) is None
    # The orphan stays (write-once, verified, unnamed); the listing says it is not registered.
    listing = {m["model_id"]: m for m in list_models(s, engine=engine)}
    assert listing[seen[0]]["registered"] is False and listing[old]["champion"] is True
    # A retry reuses the upload after verifying it again.
    retry = promote(s, [challenger], margin=0.0, engine=engine)
    assert retry["action"] == "promote" and retry["champion_after"] == seen[0] == store.get_pointer()


def test_corrupted_artifacts_are_refused(trained: dict[str, Any], engine: Any, settings: Settings,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = file_settings(settings, tmp_path)
    store = open_store(s)
    bad_local = tmp_path / "bad-artifact"
    shutil.copytree(trained["artifacts"]["glove"], bad_local)
    with open(bad_local / "weights.safetensors", "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    broken_runs = [clone_run(engine, trained["glove"], 0.9, 0.9, artifact=bad_local)]
    with pytest.raises(ArtifactError, match="weights.safetensors.*does not match its sha256"):
        promote(s, broken_runs, engine=engine)
    assert store.list_models() == [] and store.get_pointer() is None

    missing = tmp_path / "missing-artifact"
    shutil.copytree(trained["artifacts"]["glove"], missing)
    (missing / "vocabulary.json").unlink()
    broken_runs.append(clone_run(engine, trained["glove"], 0.9, 0.9, artifact=missing))
    with pytest.raises(ArtifactError, match="missing vocabulary.json"):
        promote(s, broken_runs[-1:], engine=engine)
    with engine.begin() as conn:  # later tests pick the latest runs: keep these broken ones out
        conn.execute(text("UPDATE runs SET status = 'failed' WHERE run_id = ANY(:r)"), {"r": broken_runs})

    # The store mangles the upload: the read-back check refuses it and the pointer does not move.
    real_put = FileModelStore.put_dir

    def mangling_put(self: FileModelStore, model_id: str, local_dir: Path | str) -> list[str]:
        files = real_put(self, model_id, local_dir)
        target = self.root / "models" / model_id / "decision.json"
        target.write_text(target.read_text().replace("tuned", "tumed"))
        return files

    monkeypatch.setattr(FileModelStore, "put_dir", mangling_put)
    with pytest.raises(PromotionError, match="read back .* does not verify.*decision.json"):
        promote(s, [trained["tfidf"]], engine=engine)
    assert store.get_pointer() is None and rows(engine, store.uri) == []


def test_s3_promotion_and_wrong_credentials(trained: dict[str, Any], engine: Any, settings: Settings,
                                            seaweed: Any, tmp_path: Path) -> None:
    bucket = seaweed.create_bucket("promote-" + uuid.uuid4().hex[:8])
    s = settings.replace(**seaweed.settings_overrides(f"s3://{bucket}/patentml"))
    result = promote(s, engine=engine)
    assert result["action"] == "first"
    store = open_store(s)
    assert store.get_pointer() == result["champion_after"] and store.list_models() == [result["champion_after"]]
    keys = {o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"patentml/models/{result['champion_after']}/manifest.json" in keys
    assert "patentml/pointers/champion.json" in keys
    assert list_models(s, engine=engine)[0]["champion"] is True

    wrong = s.replace(s3_secret_access_key="not-the-secret")
    before = len(rows(engine, store.uri))
    with pytest.raises(StoreError, match="S3 rejected the credentials") as caught:
        promote(wrong, [clone_run(engine, trained["glove"], 0.99, 0.99)], engine=engine)
    assert "PATENTML_S3_SECRET_ACCESS_KEY" in str(caught.value) and "not-the-secret" not in str(caught.value)
    assert len(rows(engine, store.uri)) == before and store.get_pointer() == result["champion_after"]


def _lock_waiters(engine: Any, key: int) -> int:
    """Sessions waiting for the bigint advisory lock ``key`` (pg_locks splits it into classid/objid)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    with engine.connect() as conn:
        return int(conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                 "AND classid::text::bigint = :hi AND objid::text::bigint = :lo AND objsubid = 1"),
            {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
        ).scalar())


def test_two_racing_promoters_end_consistent(trained: dict[str, Any], engine: Any, settings: Settings,
                                             seaweed: Any, tmp_path: Path) -> None:
    """Two real processes promote different challengers at the same moment into one S3 store."""
    bucket = seaweed.create_bucket("race-" + uuid.uuid4().hex[:8])
    uri = f"s3://{bucket}/patentml"
    s = settings.replace(**seaweed.settings_overrides(uri))
    store_uri = open_store(s).uri
    runs = [clone_run(engine, trained["tfidf"], 0.70, 0.70), clone_run(engine, trained["glove"], 0.80, 0.80)]
    env = {**os.environ, **seaweed.environ(uri), "PATENTML_DATABASE_URL": s.database_url,
           "PATENTML_HOME": str(s.home), "PATENTML_LOG_LEVEL": "WARNING"}
    key = lock_key(store_uri)
    procs = []
    # Hold the promotion lock so both processes queue up on it, then let them go at once.
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            for run in runs:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "patentml.cli", "promote", str(run), "--margin", "0", "--json"],
                    env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            deadline = time.monotonic() + 60
            while _lock_waiters(engine, key) < 2:
                assert time.monotonic() < deadline, "the promoters never reached the lock"
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                time.sleep(0.1)
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            holder.commit()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads(out) for out, _ in outputs]
    recorded = rows(engine, store_uri)
    assert len(recorded) == 2 and {r.challenger_run_id for r in recorded} == set(runs)
    first, second = recorded
    assert first.action == "first" and first.champion_before is None
    # The second decision saw the first one's champion: the two were serialised, not interleaved.
    assert second.champion_before == first.champion_after
    assert second.champion_score is not None
    final = open_store(s).get_pointer()
    assert final == second.champion_after
    if second.challenger_run_id == runs[1]:  # the better one came second: it must have won
        assert second.action == "promote" and final != first.champion_after
    else:
        assert second.action == "keep" and final == first.champion_after
    assert {r["promotion_id"] for r in results} == {first.promotion_id, second.promotion_id}


def test_champion_rescored_on_a_new_snapshot(trained: dict[str, Any], engine: Any, settings: Settings,
                                             tmp_path: Path) -> None:
    """The corpus grows (with a subclass the champion never saw): the champion is scored on the new test split."""
    from patentml.evaluate import evaluate_run
    from patentml.ingest import ingest
    from patentml.splits import rebuild
    from patentml.train import train

    s = file_settings(settings, tmp_path)
    first = promote(s, [trained["glove"]], engine=engine)
    champion = first["champion_after"]
    extra = make_patents(60, [*FIRST_FIVE, "F16K"], 8_100_000, seed=2)
    ingest(engine, [write_jsonl(tmp_path / "more.jsonl", extra)])
    snapshot = rebuild(engine, settings.label_scheme).snapshot_id
    assert snapshot != trained["snapshot"]
    assert promote(s, engine=engine)["action"] == "none"  # nothing trained on the new snapshot yet

    run = train("tfidf-full", settings, engine=engine)
    evaluate_run(engine, run, settings)
    result = promote(s, margin=0.0, engine=engine)
    assert result["snapshot_id"] == snapshot and result["challenger_run_id"] == run
    assert f"re-scored on snapshot {snapshot}" in result["reason"]
    cached = settings.cache_dir / "models" / champion
    expected = score_artifact(engine, cached, snapshot)
    assert expected["n_unseen_labels"] == 1  # F16K is outside the champion's label space
    assert result["champion_score"] == pytest.approx(expected["f1"])
    assert model_row(engine, champion).metrics["scores"][str(snapshot)]["f1"] == pytest.approx(expected["f1"])
    assert [r.action for r in rows(engine, open_store(s).uri)] == ["first", "none", result["action"]]


def test_best_candidate_ranks_by_metric_then_other_metric_then_oldest() -> None:

    from patentml.promote import Candidate, best_candidate

    def cand(run_id: int, f1: float, p1: float, variant: str = "tfidf-full") -> Candidate:
        return Candidate(run_id, variant, 1, "full", {"f1": f1, "p_at_1": p1, "rule": "tuned"}, "run_metrics")

    assert best_candidate([cand(1, 0.5, 0.6), cand(2, 0.6, 0.5)], "example_f1").run_id == 2
    assert best_candidate([cand(1, 0.5, 0.6), cand(2, 0.6, 0.5)], "p_at_1").run_id == 1
    assert best_candidate([cand(1, 0.5, 0.6), cand(2, 0.5, 0.7)], "example_f1").run_id == 2
    # A one-member blend scores exactly like its member: the member (older run) stays the pick.
    assert best_candidate([cand(3, 0.5, 0.6), cand(4, 0.5, 0.6, "ensemble-full")], "example_f1").run_id == 3
