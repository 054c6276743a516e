"""SQL of the ``runs`` and ``run_epochs`` tables, on the table definitions in :mod:`patentml.db.models`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from patentml.db.models import Run, RunEpoch

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Row

    from patentml.variants import VariantSpec
    from patentml.variants.base import EpochLog

RUNS = Run.__table__
EPOCHS = RunEpoch.__table__
#: How long the error text of a failed run may be (the end of a traceback says most).
ERROR_CHARS = 4000


@dataclass(frozen=True)
class RunOrigin:
    """The Airflow task instance that trains a run: every try of one task instance shares one ``runs`` row."""

    dag_id: str
    dag_run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1

    def key(self) -> dict[str, Any]:
        """The columns that name the task instance (not the try)."""
        return {k: v for k, v in asdict(self).items() if k != "try_number"}


def create(conn: "Connection", spec: "VariantSpec", snapshot_id: int, settings: dict[str, Any], *, seed: int,
           device: str, host: str, pid: int, origin: RunOrigin | None = None) -> int:
    """A new ``running`` row; returns its run id."""
    return int(conn.execute(insert(RUNS).values(
        variant=spec.name, encoder=spec.encoder, loss=spec.loss, dataset=spec.dataset, snapshot_id=snapshot_id,
        status="running", settings=_json(settings), seed=seed, device=device, host=host, pid=pid,
        **(asdict(origin) if origin is not None else {}),
    ).returning(RUNS.c.run_id)).scalar_one())


def by_origin(conn: "Connection", origin: RunOrigin, variant: str) -> "Row[Any] | None":
    """The run an earlier try of the same task instance made for ``variant`` (None: this is the first)."""
    where = [RUNS.c[k] == v for k, v in origin.key().items()] + [RUNS.c.variant == variant]
    return conn.execute(select(RUNS).where(*where).order_by(RUNS.c.run_id.desc()).limit(1)).one_or_none()


def get(conn: "Connection", run_id: int) -> "Row[Any] | None":
    return conn.execute(select(RUNS).where(RUNS.c.run_id == run_id)).one_or_none()


def using_artifact(conn: "Connection", artifact_id: str) -> list[int]:
    """Succeeded runs whose model is the candidate ``artifact_id``."""
    return list(conn.execute(select(RUNS.c.run_id).where(RUNS.c.artifact_id == artifact_id,
                                                         RUNS.c.status == "succeeded").order_by(RUNS.c.run_id)).scalars())


def get_many(conn: "Connection", run_ids: Sequence[int]) -> list["Row[Any]"]:
    return list(conn.execute(select(RUNS).where(RUNS.c.run_id.in_(list(run_ids))).order_by(RUNS.c.run_id)))


def restart(conn: "Connection", run_id: int, *, host: str, pid: int, try_number: int | None = None) -> None:
    values: dict[str, Any] = {"status": "running", "error": None, "host": host, "pid": pid, "finished_at": None}
    if try_number is not None:
        values["try_number"] = try_number
    conn.execute(update(RUNS).where(RUNS.c.run_id == run_id).values(**values))


def record_epoch(conn: "Connection", run_id: int, e: "EpochLog") -> None:
    """Upsert one epoch's row (a resumed run rewrites the epochs it repeats) and the run's epoch count."""
    values = {"train_loss": e.train_loss, "valid_loss": e.valid_loss, "valid_f1": e.valid_f1,
              "valid_p_at_1": e.valid_p_at_1, "seconds": e.seconds, "patents_per_second": e.patents_per_second}
    stmt = pg_insert(EPOCHS).values(run_id=run_id, epoch=e.epoch, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[EPOCHS.c.run_id, EPOCHS.c.epoch],
                                            set_={k: stmt.excluded[k] for k in values}))
    conn.execute(update(RUNS).where(RUNS.c.run_id == run_id).values(epochs_done=e.epoch))


def best_epoch(conn: "Connection", run_id: int) -> int | None:
    """The epoch with the best validation F1 (the earliest of equals)."""
    return conn.execute(select(EPOCHS.c.epoch).where(EPOCHS.c.run_id == run_id, EPOCHS.c.valid_f1.is_not(None))
                        .order_by(EPOCHS.c.valid_f1.desc(), EPOCHS.c.epoch).limit(1)).scalar()


def succeed(conn: "Connection", run_id: int, *, train_seconds: float, n_params: int, artifact_dir: str,
            artifact_store: str, artifact_id: str, artifact_sha256: str, decision: dict[str, Any], rule: str,
            settings: dict[str, Any]) -> None:
    """Mark a run succeeded with its model (local folder and store reference), its decision rule (and
    that rule's name) and its resolved settings."""
    conn.execute(update(RUNS).where(RUNS.c.run_id == run_id).values(
        status="succeeded", finished_at=func.now(), train_seconds=train_seconds, n_params=n_params,
        artifact_dir=artifact_dir, artifact_store=artifact_store, artifact_id=artifact_id,
        artifact_sha256=artifact_sha256, decision_rule=_json(decision), rule=rule, settings=_json(settings),
        best_epoch=best_epoch(conn, run_id)))


def fail(conn: "Connection", run_id: int, status: str, error: str) -> None:
    conn.execute(update(RUNS).where(RUNS.c.run_id == run_id).values(
        status=status, finished_at=func.now(), error=error[-ERROR_CHARS:]))


def mark_stale(conn: "Connection", host: str, alive: Callable[[int], bool]) -> int:
    """Runs left ``running`` on ``host`` by a process that no longer exists become ``interrupted``."""
    rows = conn.execute(select(RUNS.c.run_id, RUNS.c.pid).where(RUNS.c.status == "running", RUNS.c.host == host))
    stale = [r.run_id for r in rows if r.pid is None or not alive(r.pid)]
    if stale:
        conn.execute(update(RUNS).where(RUNS.c.run_id.in_(stale)).values(
            status="interrupted", finished_at=func.now(),
            error="the training process ended without finishing (killed?)"))
    return len(stale)


def latest_succeeded(conn: "Connection", variants: Iterable[str], snapshot_id: int) -> dict[str, "Row[Any]"]:
    """The latest succeeded run of each variant on a snapshot, by variant."""
    latest = (select(RUNS.c.variant, func.max(RUNS.c.run_id).label("run_id"))
              .where(RUNS.c.variant.in_(list(variants)), RUNS.c.snapshot_id == snapshot_id,
                     RUNS.c.status == "succeeded").group_by(RUNS.c.variant).subquery())
    rows = conn.execute(select(RUNS).join(latest, and_(RUNS.c.run_id == latest.c.run_id)))
    return {r.variant: r for r in rows}


def _json(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON round trip: what JSONB will hold (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value))
