"""SQL of the model registry: ``models`` (artifacts in the store) and ``promotions`` (every decision, with its reason)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

from sqlalchemy import cast, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from patentml.db.models import ModelRow, Promotion, Run

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Row

MODELS = ModelRow.__table__
PROMOTIONS = Promotion.__table__
RUNS = Run.__table__
#: What a promotion row holds besides its id and time (the columns ``record_decision`` fills).
DECISION_COLUMNS = ("action", "promoted", "challenger_model_id", "challenger_run_id", "champion_before",
                    "champion_after", "metric", "challenger_score", "champion_score", "margin", "snapshot_id",
                    "store_uri", "reason")


def record_decision(conn: "Connection", row: dict[str, Any]) -> int:
    """Insert a ``promotions`` row (``row`` holds at least :data:`DECISION_COLUMNS`); returns its id."""
    return int(conn.execute(insert(PROMOTIONS).values({k: row[k] for k in DECISION_COLUMNS})
                            .returning(PROMOTIONS.c.promotion_id)).scalar_one())


def upsert_model(conn: "Connection", *, model_id: str, run_id: int | None, variant: str, snapshot_id: int | None,
                 store_uri: str, manifest_sha256: str, scores: dict[str, Any]) -> None:
    """Register a model; a model registered before keeps its row and gains the scores by snapshot."""
    doc = {"scores": json.loads(json.dumps(scores))}
    stmt = pg_insert(MODELS).values(model_id=model_id, run_id=run_id, variant=variant, snapshot_id=snapshot_id,
                                    store_uri=store_uri, manifest_sha256=manifest_sha256, metrics=doc)
    merged = func.jsonb_build_object("scores", func.coalesce(MODELS.c.metrics["scores"], _jsonb({}))
                                     .op("||")(stmt.excluded.metrics["scores"]))
    conn.execute(stmt.on_conflict_do_update(index_elements=[MODELS.c.model_id],
                                            set_={"metrics": MODELS.c.metrics.op("||")(merged)}))


def model(conn: "Connection", model_id: str) -> "Row[Any] | None":
    """A registered model with its run's snapshot, dataset and decision rule (None when unregistered)."""
    query = (select(MODELS, RUNS.c.snapshot_id.label("run_snapshot"), RUNS.c.dataset, RUNS.c.rule)
             .select_from(MODELS.outerjoin(RUNS, RUNS.c.run_id == MODELS.c.run_id)).where(MODELS.c.model_id == model_id))
    return conn.execute(query).one_or_none()


def models(conn: "Connection", model_ids: Sequence[str]) -> dict[str, "Row[Any]"]:
    return {r.model_id: r for r in conn.execute(select(MODELS).where(MODELS.c.model_id.in_(list(model_ids))))}


def record_scores(conn: "Connection", model_id: str, snapshot_id: int, scores: dict[str, Any]) -> None:
    """Remember a model's scores on another snapshot's test split (a champion re-scored for a new snapshot)."""
    merged = func.coalesce(MODELS.c.metrics["scores"], _jsonb({})).op("||")(
        func.jsonb_build_object(str(snapshot_id), _jsonb(scores)))
    conn.execute(update(MODELS).where(MODELS.c.model_id == model_id).values(
        metrics=MODELS.c.metrics.op("||")(func.jsonb_build_object("scores", merged))))


def recorded_champion(conn: "Connection", store_uri: str) -> str | None:
    """The champion the registry last recorded for a store (the latest decision's ``champion_after``)."""
    p = PROMOTIONS
    return conn.execute(select(p.c.champion_after).where(p.c.store_uri == store_uri, p.c.champion_after.is_not(None))
                        .order_by(p.c.promotion_id.desc()).limit(1)).scalar()


def run_of_model(conn: "Connection", model_id: str) -> int | None:
    return conn.execute(select(MODELS.c.run_id).where(MODELS.c.model_id == model_id)).scalar()


def promotions(conn: "Connection", limit: int = 20) -> list[dict[str, Any]]:
    p = PROMOTIONS
    query = select(p).order_by(p.c.decided_at.desc(), p.c.promotion_id.desc()).limit(limit)
    return [dict(r._mapping) for r in conn.execute(query)]


def _jsonb(value: Any) -> Any:
    """A bound JSON value as a ``jsonb`` expression."""
    return cast(literal(json.dumps(value)), JSONB)
