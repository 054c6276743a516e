"""The UI page's data in one SQL statement: leaderboard of a snapshot, champion, curves, sections, history, batches.

One round trip and one consistent view of the tables: every part is a JSON aggregate of a subquery
of a single ``SELECT``. Each run's score is its ``run_metrics`` row under the run's own rule
(:func:`patentml.db.results.own_rule`), ranked by :func:`patentml.db.results.rank_order`; rows come back
as plain dicts.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, bindparam, column, func, literal, literal_column, or_, select, text
from sqlalchemy.dialects.postgresql import aggregate_order_by

from patentml.db.corpus import BATCHES_SQL, COUNTS
from patentml.db.models import DatasetSnapshot
from patentml.db.registry import MODELS, PROMOTIONS
from patentml.db.results import RUN_METRICS as METRICS
from patentml.db.results import RUNS, SCORE_COLUMNS, SECTIONS, own_rule, rank_order
from patentml.db.runs import EPOCHS

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.sql import FromClause, Select

SNAPSHOTS = DatasetSnapshot.__table__
SPLIT = "test"
#: Run columns too large or too internal for the page; every other column (new ones too) is passed on.
HIDDEN_RUN_COLUMNS = frozenset({"settings", "decision_rule", "pid"})
#: Most promotion decisions the history chart reads.
HISTORY = 200


def _run_columns() -> list[Any]:
    return [c for c in RUNS.c if c.name not in HIDDEN_RUN_COLUMNS]


def _json_rows(sub: "FromClause", *order: Any) -> Any:
    """``coalesce(json_agg(sub ORDER BY ...), '[]')`` as a scalar subquery."""
    agg = func.json_agg(aggregate_order_by(sub.table_valued(), *order)) if order else func.json_agg(sub.table_valued())
    return select(func.coalesce(agg, literal_column("'[]'::json"))).select_from(sub).scalar_subquery()


@functools.lru_cache(maxsize=1)
def page_query() -> "Select[Any]":
    """The one statement behind the page (see :func:`page_data`), built once: its parameters are bound at
    execution (``snapshot_id``, ``limit``, ``history``), so SQLAlchemy compiles it once per process too."""
    snapshot_id = bindparam("snapshot_id", type_=Integer)
    limit, history = bindparam("limit", type_=Integer), bindparam("history", type_=Integer)
    champion_id = (select(PROMOTIONS.c.champion_after)
                   .order_by(PROMOTIONS.c.decided_at.desc(), PROMOTIONS.c.promotion_id.desc()).limit(1)
                   .scalar_subquery())
    score_cols = [METRICS.c[c] for c in SCORE_COLUMNS if c != "rule"]  # the rule is the run's own (joined on)
    scored = (select(*_run_columns(), *score_cols)
              .select_from(RUNS.join(METRICS, own_rule(METRICS, SPLIT)))
              .where(RUNS.c.status == "succeeded").cte("scored"))
    chosen = func.coalesce(snapshot_id, select(func.max(scored.c.snapshot_id)).scalar_subquery())
    board = (select(scored, func.row_number().over(order_by=rank_order(scored.c)).label("rank"))
             .where(scored.c.snapshot_id == chosen).order_by(*rank_order(scored.c)).limit(limit).cte("board"))
    # The model's own columns, then its run's (a DAG run id too, once runs record it) and the run's score.
    model_cols = [c for c in MODELS.c if c.name != "metrics"]
    champion = (select(*model_cols, *[c for c in scored.c if c.name not in {m.name for m in MODELS.c}])
                .select_from(MODELS.outerjoin(scored, scored.c.run_id == MODELS.c.run_id))
                .where(MODELS.c.model_id == champion_id).cte("champion"))
    shown_runs = select(board.c.run_id).union(select(champion.c.run_id).where(champion.c.run_id.is_not(None)))

    epochs = select(EPOCHS).where(EPOCHS.c.run_id.in_(shown_runs)).subquery("e")
    sections = (select(SECTIONS.c.run_id, SECTIONS.c.section, SECTIONS.c.precision, SECTIONS.c.recall,
                       SECTIONS.c.f1, SECTIONS.c.n_patents)
                .select_from(SECTIONS.join(RUNS, own_rule(SECTIONS, SPLIT)))
                .where(SECTIONS.c.run_id.in_(shown_runs)).subquery("s"))
    promotions = (select(PROMOTIONS).order_by(PROMOTIONS.c.decided_at.desc(), PROMOTIONS.c.promotion_id.desc())
                  .limit(history).subquery("p"))
    snapshots = (select(SNAPSHOTS.c.snapshot_id, SNAPSHOTS.c.created_at, SNAPSHOTS.c.label_scheme,
                        func.count().label("n_runs"))
                 .select_from(SNAPSHOTS.join(scored, scored.c.snapshot_id == SNAPSHOTS.c.snapshot_id))
                 .group_by(SNAPSHOTS.c.snapshot_id).subquery("n"))
    # Runs that are not on any leaderboard: failed, running, interrupted, or succeeded but not evaluated.
    m = METRICS.alias("m")
    seconds = func.coalesce(RUNS.c.train_seconds, func.extract("epoch", func.coalesce(RUNS.c.finished_at, func.now())
                                                               - RUNS.c.started_at))
    unfinished = (select(*_run_columns(), seconds.label("seconds"))
                  .select_from(RUNS.outerjoin(m, own_rule(m, SPLIT)))
                  .where(or_(RUNS.c.status != "succeeded", m.c.run_id.is_(None)))
                  .order_by(RUNS.c.started_at.desc(), RUNS.c.run_id.desc()).limit(limit).subquery("u"))
    batches = text(BATCHES_SQL).bindparams(limit).columns(column("batch_id")).subquery("b")
    counts = func.json_build_object(*[part for name, sql in COUNTS.items()
                                      for part in (literal(name), literal_column(f"({sql})"))])
    champion_json = select(func.row_to_json(champion.table_valued())).scalar_subquery()
    return select(
        chosen.label("snapshot_id"),
        counts.label("counts"),
        champion_json.label("champion"),
        _json_rows(board, board.c.rank).label("board"),
        _json_rows(snapshots, snapshots.c.snapshot_id.desc()).label("snapshots"),
        _json_rows(unfinished, unfinished.c.started_at.desc(), unfinished.c.run_id.desc()).label("unfinished"),
        _json_rows(epochs, epochs.c.run_id, epochs.c.epoch).label("epochs"),
        _json_rows(sections, sections.c.run_id, sections.c.section).label("sections"),
        _json_rows(promotions, promotions.c.decided_at.desc(), promotions.c.promotion_id.desc()).label("promotions"),
        _json_rows(batches, batches.c.batch_id.desc()).label("batches"),
    )


def page_data(conn: "Connection", *, snapshot_id: int | None = None, limit: int = 20,
              history: int = HISTORY) -> dict[str, Any]:
    """Everything the page shows, read in one statement.

    ``board``: the scored runs of ``snapshot_id`` (default: the latest snapshot with scored runs), best
    first, each with its ``rank``; ``champion``: the latest decision's champion with its run's score (or
    None); ``epochs`` and ``sections`` of the board's runs and the champion's run; ``unfinished``: recent
    runs that are on no leaderboard; ``promotions``: the latest ``history`` decisions, newest first;
    ``snapshots`` with scored runs, newest first; ``batches``; ``counts``. Timestamps are datetimes.
    """
    row = conn.execute(page_query(), {"snapshot_id": snapshot_id, "limit": limit, "history": history}).one()
    return {key: _restore(value) for key, value in row._mapping.items()}


def _restore(value: Any) -> Any:
    """JSON back to Python: ``*_at`` strings become datetimes (json_agg writes timestamps as ISO text)."""
    if isinstance(value, list):
        return [_restore(v) for v in value]
    if isinstance(value, dict):
        return {k: (_timestamp(v) if k.endswith("_at") else _restore(v)) for k, v in value.items()}
    return value


def _timestamp(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


__all__ = ["HISTORY", "page_data", "page_query"]
