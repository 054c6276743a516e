"""Promotion when things break: a champion that cannot be loaded, a model swapped under its id, the lock's
session during the upload, a promoter SIGKILLed at each step, the S3 server stopped mid-upload, and
`patentml models remove` for what is left. After every fault the next `promote` ends consistent:
the pointer names the registry's champion with its manifest's sha256, and the store holds it whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from patentml.artifact import MANIFEST, load_json, verify_artifact, write_manifest
from patentml.exceptions import ArtifactError, StoreError
from patentml.promote import lock_key, promote
from patentml.settings import Settings
from patentml.store import CANDIDATES, FileModelStore, open_store
from tests.test_promote import build_trained, clone_run, file_settings, rows

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(engine: Any, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_trained(engine, settings, tmp_path_factory.mktemp("corpus"))


def assert_consistent(engine: Any, s: Settings, tmp_path: Path) -> str:
    """The pointer, the registry and the store agree; returns the champion."""
    from patentml.db import registry

    store = open_store(s)
    info = store.pointer_info()
    assert info is not None
    with engine.connect() as conn:
        recorded = registry.recorded_champion(conn, store.uri)
        row = registry.model(conn, info["model_id"])
        waiting = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(store.uri)}).scalar()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(store.uri)})
    assert info["model_id"] == recorded, (info, recorded)
    assert row is not None and row.manifest_sha256 == info["sha256"]
    copy = store.get_dir(info["model_id"], tmp_path / f"check-{uuid.uuid4().hex[:6]}")
    verify_artifact(copy, info["sha256"])
    assert all(store.is_complete(m) for m in store.list_models()), "an interrupted upload was left"
    assert waiting is True, "the promotion lock is still held"
    return str(info["model_id"])


# --- a champion that cannot be loaded ---------------------------------------------------------------------


def test_a_champion_deleted_from_the_store_is_replaced_with_the_reason(
        trained: dict[str, Any], engine: Any, settings: Settings, tmp_path: Path) -> None:
    s = file_settings(settings, tmp_path)
    store = open_store(s)
    champ = promote(s, [clone_run(engine, trained["tfidf"], 0.9, 0.9)], engine=engine)["champion_after"]
    assert isinstance(store, FileModelStore)
    shutil.rmtree(store.root / "models" / champ)  # gone behind PatentML's back
    weaker = promote(s, [clone_run(engine, trained["glove"], 0.5, 0.5)], margin=0.0, engine=engine)
    assert weaker["action"] == "promote" and weaker["champion_after"] != champ
    assert f"the current champion {champ} cannot be loaded (it is not in {store.uri}" in weaker["reason"]
    assert rows(engine, store.uri)[-1].reason == weaker["reason"]
    assert_consistent(engine, s, tmp_path)


def test_a_champion_whose_settings_this_code_refuses_is_replaced(
        trained: dict[str, Any], engine: Any, settings: Settings, tmp_path: Path) -> None:
    """A model saved by a newer PatentML with a setting this one does not know: consistent, but not loadable."""
    from patentml.runstore import run_artifact

    s = file_settings(settings, tmp_path)
    future = tmp_path / "future"
    shutil.copytree(run_artifact(engine, trained["tfidf"], settings), future)
    meta = load_json(future / "model.json")
    meta["params"]["from_the_future"] = 1
    (future / "model.json").write_text(json.dumps(meta))
    old = load_json(future / MANIFEST)
    (future / MANIFEST).unlink()
    write_manifest(future, {k: old[k] for k in ("run_id", "snapshot_id", "variant", "backend")})
    champ = promote(s, [clone_run(engine, trained["tfidf"], 0.9, 0.9, artifact=future)], engine=engine)
    assert champ["action"] == "first"
    weaker = promote(s, [clone_run(engine, trained["glove"], 0.5, 0.5)], margin=0.0, engine=engine)
    assert weaker["action"] == "promote", weaker["reason"]
    assert "cannot be loaded (ConfigError: unknown setting(s) from_the_future" in weaker["reason"]
    assert weaker["champion"]["broken"].startswith("ConfigError")


def test_prediction_refuses_a_model_swapped_under_the_champions_id(
        trained: dict[str, Any], engine: Any, settings: Settings, tmp_path: Path) -> None:
    from patentml.db import registry
    from patentml.predict import Predictor
    from patentml.runstore import run_artifact

    s = file_settings(settings, tmp_path)
    champ = promote(s, [clone_run(engine, trained["tfidf"], 0.9, 0.9)], engine=engine)["champion_after"]
    store = open_store(s)
    with engine.connect() as conn:
        assert store.pointer_info()["sha256"] == registry.model(conn, champ).manifest_sha256
    reader = s.replace(home=tmp_path / "reader")  # another host: an empty cache
    assert Predictor.open(reader).model_id == champ
    target = store.root / "models" / champ
    shutil.rmtree(target)
    shutil.copytree(run_artifact(engine, trained["glove"], settings), target)  # consistent, but another model
    with pytest.raises(ArtifactError, match="not the model that was registered or pointed to"):
        Predictor.open(s.replace(home=tmp_path / "reader2"))


def test_the_lock_session_is_not_idle_in_a_transaction_during_the_upload(
        trained: dict[str, Any], engine: Any, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = file_settings(settings, tmp_path)
    seen: list[list[Any]] = []
    real_put = FileModelStore.put_dir

    def watching_put(self: FileModelStore, model_id: str, local: Path | str, area: str = "models") -> list[str]:
        with engine.connect() as conn:
            seen.append(list(conn.execute(text(
                "SELECT pid, state, left(query, 60) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"))))
        return real_put(self, model_id, local, area)

    monkeypatch.setattr(FileModelStore, "put_dir", watching_put)
    assert promote(s, [clone_run(engine, trained["tfidf"], 0.9, 0.9)], engine=engine)["promoted"]
    assert seen == [[]], f"sessions idle in a transaction during the upload: {seen}"


# --- a promoter killed at each step, the S3 server stopped ------------------------------------------------

FAULT_RUNNER = r'''
import os, signal, sys
import patentml.promote as promote_pkg
from patentml.settings import Settings
from patentml.store.s3 import S3ModelStore

point, run_id = sys.argv[1], int(sys.argv[2])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def then_die(owner, name):
    real = getattr(owner, name)
    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        die()
        return out
    setattr(owner, name, wrapped)

if point == "mid_upload":  # a file or two of the model stored, not the manifest
    real_put = S3ModelStore._put_new
    def put_new(self, key, path):
        if key.endswith("/manifest.json") and "/models/" in key:
            die()
        return real_put(self, key, path)
    S3ModelStore._put_new = put_new
elif point == "after_upload":
    then_die(S3ModelStore, "put_dir")
elif point == "after_verify":
    then_die(promote_pkg, "upload_verified")
elif point == "after_pointer_move":  # the pointer moved, the registry rows not committed
    then_die(promote_pkg, "move_pointer")
promote_pkg.promote(Settings.from_env(), [run_id], margin=0.0)
print("NOT KILLED")
'''


@pytest.mark.parametrize("point", ["mid_upload", "after_upload", "after_verify", "after_pointer_move"])
def test_a_promoter_killed_at_any_step_leaves_a_state_the_next_promote_completes(
        trained: dict[str, Any], engine: Any, settings: Settings, seaweed: Any, tmp_path: Path, point: str) -> None:
    bucket = seaweed.create_bucket("fault-" + uuid.uuid4().hex[:8])
    uri = f"s3://{bucket}/patentml"
    s = settings.replace(**seaweed.settings_overrides(uri))
    baseline = promote(s, [clone_run(engine, trained["tfidf"], 0.5, 0.5)], engine=engine)["champion_after"]
    challenger = clone_run(engine, trained["glove"], 0.9, 0.9)
    env = {**os.environ, **seaweed.environ(uri), "PATENTML_DATABASE_URL": s.database_url,
           "PATENTML_HOME": str(tmp_path / "killed-host"), "PATENTML_LOG_LEVEL": "WARNING"}
    proc = subprocess.run([sys.executable, "-c", FAULT_RUNNER, point, str(challenger)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    store = open_store(s)
    assert [r.champion_after for r in rows(engine, store.uri)] == [baseline]  # nothing was committed
    if point == "after_pointer_move":
        assert store.get_pointer() != baseline  # the dead promoter's pointer move, ahead of the registry

    after = promote(s, [challenger], margin=0.0, engine=engine)
    assert after["action"] == "promote" and after["champion_before"] == baseline
    assert (after["repaired"] is not None) == (point == "after_pointer_move"), after["repaired"]
    assert assert_consistent(engine, s, tmp_path) == after["champion_after"]
    assert [r.action for r in rows(engine, store.uri)] == ["first", "promote"]


def test_s3_server_stopped_mid_upload_then_the_next_promote_completes(
        trained: dict[str, Any], engine: Any, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3server import SeaweedS3

    from patentml.store.s3 import S3ModelStore

    with SeaweedS3.start(tmp_path / "weed") as server:
        bucket = server.create_bucket("stopped-" + uuid.uuid4().hex[:8])
        uri = f"s3://{bucket}/patentml"
        s = settings.replace(**server.settings_overrides(uri))
        baseline = promote(s, [clone_run(engine, trained["tfidf"], 0.5, 0.5)], engine=engine)["champion_after"]
        challenger = clone_run(engine, trained["glove"], 0.9, 0.9)
        real_put = S3ModelStore._put_new
        stored: list[str] = []

        def put_then_stop(self: S3ModelStore, key: str, path: Path) -> None:
            real_put(self, key, path)
            stored.append(key)
            if len(stored) == 2 and "/models/" in key:
                server.stop()  # the server goes away half-way through the model's files

        monkeypatch.setattr(S3ModelStore, "_put_new", put_then_stop)
        with pytest.raises(StoreError, match="cannot reach the S3 endpoint"):
            promote(s, [challenger], margin=0.0, engine=engine)
        monkeypatch.setattr(S3ModelStore, "_put_new", real_put)
        server.restart()
        store = open_store(s)
        partial = [m for m in store.list_models() if not store.is_complete(m)]
        assert len(partial) == 1 and store.get_pointer() == baseline  # what the outage left
        after = promote(s, [challenger], margin=0.0, engine=engine)
        assert after["action"] == "promote" and after["champion_after"] == partial[0]
        assert assert_consistent(engine, s, tmp_path) == partial[0]


# --- patentml models remove ------------------------------------------------------------------------------


def test_models_remove_takes_unpromoted_uploads_only(
        trained: dict[str, Any], engine: Any, settings: Settings, seaweed: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from patentml.cli import main

    bucket = seaweed.create_bucket("remove-" + uuid.uuid4().hex[:8])
    uri = f"s3://{bucket}/patentml"
    s = settings.replace(**seaweed.settings_overrides(uri))
    champ = promote(s, [clone_run(engine, trained["tfidf"], 0.9, 0.9)], engine=engine)["champion_after"]
    seaweed.client().put_object(Bucket=bucket, Key="patentml/models/orphan-r1-0000/model.json", Body=b"{}")
    for key, value in seaweed.environ().items():
        monkeypatch.setenv(key, value)
    argv = ["--database-url", s.database_url, "--home", str(s.home), "--store-uri", uri]
    assert main([*argv, "models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "orphan-r1-0000" in listing and "interrupted upload" in listing
    assert main([*argv, "models", "remove", champ]) == 1
    assert "it was promoted" in capsys.readouterr().err
    assert main([*argv, "models", "remove", "orphan-r1-0000"]) == 0
    assert "removed models/orphan-r1-0000" in capsys.readouterr().out
    assert open_store(s).list_models() == [champ]
    # A run's candidate (in the store the run was trained with) stays while a run uses it.
    with engine.connect() as conn:
        used = conn.execute(text("SELECT artifact_id FROM runs WHERE run_id = :r"), {"r": trained["tfidf"]}).scalar()
    own = ["--database-url", s.database_url, "--home", str(s.home), "--store-uri", str(settings.store_uri)]
    assert main([*own, "models", "remove", "--candidate", used]) == 1
    assert "use it" in capsys.readouterr().err
    assert open_store(settings).is_complete(used, CANDIDATES)


def test_a_held_promotion_moves_nothing_until_applied_and_a_refusal_is_recorded(
        trained: dict[str, Any], engine: Any, settings: Settings, tmp_path: Path) -> None:
    from patentml.promote import reject

    s = file_settings(settings, tmp_path)
    store = open_store(s)
    baseline = promote(s, [clone_run(engine, trained["tfidf"], 0.5, 0.5)], engine=engine)["champion_after"]
    better = clone_run(engine, trained["glove"], 0.9, 0.9)
    held = promote(s, [better], margin=0.0, engine=engine, hold=True)
    assert held["pending"] and held["action"] == "promote" and "promotion_id" not in held
    assert store.get_pointer() == baseline and store.is_complete(held["challenger_model_id"])  # staged, verified
    assert len(rows(engine, store.uri)) == 1
    refused = reject(s, held, "alice", engine=engine)
    assert rows(engine, store.uri)[-1].reason.startswith("approval refused by alice: ")
    assert refused["action"] == "keep" and store.get_pointer() == baseline
    # Approved later: applied only while the same decision holds.
    expect = {"champion_before": held["champion_before"], "challenger_model_id": held["challenger_model_id"]}
    applied = promote(s, [better], margin=0.0, engine=engine, expect=expect)
    assert applied["promoted"] and store.get_pointer() == held["challenger_model_id"]
    stale = promote(s, [clone_run(engine, trained["tfidf"], 0.95, 0.95)], margin=0.0, engine=engine, expect=expect)
    assert stale["action"] == "keep" and "no longer holds" in stale["reason"]
    assert store.get_pointer() == held["challenger_model_id"]
    assert_consistent(engine, s, tmp_path)
