"""What a promotion reads before it decides: the store's lock, the pointer made consistent with the
registry, and the champion as it really is (loadable and scored, or the reason it cannot be used).

The lock is a session-level advisory lock on a connection of its own in autocommit mode: it is
held while artifacts are downloaded, scored and uploaded, and no transaction stays open meanwhile
(a session idle in a transaction for minutes holds back vacuum and is killed by
``idle_in_transaction_session_timeout``). Rows are written in short transactions.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Iterator

from patentml.exceptions import DatabaseError, StoreError
from patentml.promote.decide import DATASET, SPLIT, ChampionState
from patentml.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.engine import Engine

    from patentml.store import ModelStore
    from patentml.variants.base import Backend

log = logging.getLogger(__name__)


@contextlib.contextmanager
def store_lock(engine: "Engine", store_uri: str) -> Iterator[None]:
    """Hold the store's promotion lock (``pg_advisory_lock``) for the block, outside any transaction.

    A process that dies holding it loses its connection, and Postgres releases the lock with it.
    """
    from sqlalchemy import text

    from patentml.db import locks

    key = locks.promotion(store_uri)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a broken connection has released it already
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def reconcile_pointer(engine: "Engine", store: "ModelStore") -> str | None:
    """Make the champion pointer agree with the registry, which is committed last; returns what was repaired.

    A promotion that died after moving the pointer but before its commit leaves the pointer on a
    model the registry never recorded: the pointer goes back to the recorded champion (or is removed
    when there is none and the model is unregistered). Called under :func:`store_lock`.
    """
    from patentml.db import registry
    from patentml.store import CHAMPION, POINTERS

    info = store.pointer_info()
    with engine.connect() as conn:
        recorded = registry.recorded_champion(conn, store.uri)
        known = registry.model(conn, info["model_id"]) if info is not None else None
        target = registry.model(conn, recorded) if recorded is not None else None
    if info is None or info["model_id"] == recorded or (recorded is None and known is not None):
        return None
    pointed = info["model_id"]
    if recorded is None:
        store.delete_text(f"{POINTERS}/{CHAMPION}.json")
        what = f"the champion pointer named {pointed}, which no committed promotion recorded: removed it"
    else:
        store.set_pointer(CHAMPION, recorded, sha256=target.manifest_sha256 if target is not None else None)
        what = (f"the champion pointer named {pointed}, but the registry's champion is {recorded} (a promotion "
                "died between moving the pointer and committing): moved it back")
    log.warning("Promotion: %s", what)
    return what


def load_champion(store: "ModelStore", settings: Settings, model_id: str,
                  sha256: str | None) -> tuple["Backend | None", "Path | None", str | None]:
    """(backend, local folder, None) of a loadable champion, or (None, None, why it cannot be used).

    Anything that stops the model from loading counts: gone from the store, a checksum that does
    not match (the pointer's or the registry's), settings or a backend this code refuses. Errors of
    the store itself (unreachable, credentials) are raised: they say nothing about the model.
    """
    from patentml.artifact import cached_model_dir
    from patentml.variants.base import load_backend

    if not store.is_complete(model_id):
        return None, None, f"it is not in {store.uri} (deleted, or its upload never finished)"
    try:
        folder = cached_model_dir(store, model_id, settings.model_cache_dir, verify=True, expected_sha256=sha256)
        return load_backend(folder), folder, None
    except (StoreError, DatabaseError):
        raise
    except Exception as exc:  # noqa: BLE001 - any reason the model cannot be loaded makes it replaceable
        return None, None, f"{type(exc).__name__}: {exc}"


def champion_state(engine: "Engine", settings: Settings, store: "ModelStore", pointer: dict[str, Any],
                   snapshot_id: int) -> ChampionState:
    """The champion with its scores on ``snapshot_id``'s full test split (recorded, or re-scored now),
    or ``broken`` with the reason it cannot be loaded."""
    from patentml.artifact import MANIFEST, load_json
    from patentml.db import registry, results

    model_id = pointer["model_id"]
    champ = ChampionState(model_id)
    with engine.connect() as conn:
        row = registry.model(conn, model_id)
        scored = results.run_scores(conn, [row.run_id]) if row is not None and row.run_id is not None else []
    sha = pointer.get("sha256") or (row.manifest_sha256 if row is not None else None)
    backend, folder, problem = load_champion(store, settings, model_id, sha)
    if problem is not None:
        champ.broken = problem
        return champ
    assert backend is not None and folder is not None
    manifest = load_json(folder / MANIFEST)
    champ.run_id = row.run_id if row is not None else manifest.get("run_id")
    champ.variant = row.variant if row is not None else manifest.get("variant")
    recorded = ((row.metrics or {}).get("scores") or {}).get(str(snapshot_id)) if row is not None else None
    if recorded:
        champ.scores, champ.source = recorded, f"recorded for snapshot {snapshot_id}"
        return champ
    if row is not None and row.run_snapshot == snapshot_id and row.dataset == DATASET and scored:
        champ.scores, champ.source = results.score_of(scored[0]), "run_metrics"
        return champ
    log.info("Re-scoring champion %s on the %s test split of snapshot %s", model_id, DATASET, snapshot_id)
    champ.scores = score_backend(engine, backend, snapshot_id)
    champ.source = f"re-scored on snapshot {snapshot_id}"
    if row is not None:
        with engine.begin() as conn:
            registry.record_scores(conn, model_id, snapshot_id, champ.scores)
    return champ


def score_backend(engine: "Engine", backend: "Backend", snapshot_id: int, dataset: str = DATASET,
                  split: str = SPLIT) -> dict[str, Any]:
    """Score a loaded model on a split under its own decision rule (across label spaces: unseen labels count)."""
    from patentml.scoring import score_model
    from patentml.splits import SplitCorpus

    scores = score_model(backend, SplitCorpus(engine, snapshot_id, dataset, split),
                         f"{split} split of snapshot {snapshot_id} ({dataset})")
    return {**scores, "snapshot_id": snapshot_id, "dataset": dataset}
