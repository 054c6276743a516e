"""SQL of ``patent_suggestions``: which patents a model still has to score, writing whole patents, reading them back."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from sqlalchemy import and_, cast, delete, exists, func, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.types import Date

from patentml.db import locks
from patentml.db.models import Patent, PatentSuggestion

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.sql import Select

SUGGESTIONS = PatentSuggestion.__table__
PATENTS = Patent.__table__
#: The table's columns in order: what an export writes (CSV header, JSON keys).
COLUMNS = tuple(c.name for c in SUGGESTIONS.columns)


def _patents(model_id: str, since: dt.date | None, rescore: bool) -> "Select[Any]":
    """Patents to score: those without a suggestion from ``model_id`` (all of them when ``rescore``),
    first stored on or after ``since`` when given, in id order."""
    query = select(PATENTS.c.patent_id, PATENTS.c.abstract)
    if not rescore:
        s = SUGGESTIONS
        query = query.where(~exists().where(s.c.patent_id == PATENTS.c.patent_id, s.c.model_id == model_id))
    if since is not None:
        query = query.where(cast(PATENTS.c.first_seen_at, Date) >= since)
    return query.order_by(PATENTS.c.patent_id)


def count_pending(conn: "Connection", model_id: str, *, since: dt.date | None = None, rescore: bool = False) -> int:
    """How many patents :func:`stream_pending` will yield (the progress bar's total)."""
    inner = _patents(model_id, since, rescore).order_by(None).subquery()
    return int(conn.execute(select(func.count()).select_from(inner)).scalar_one())


def count_scored(conn: "Connection", model_id: str) -> int:
    """Patents that hold suggestions from ``model_id``."""
    s = SUGGESTIONS
    return int(conn.execute(select(func.count(func.distinct(s.c.patent_id))).where(s.c.model_id == model_id))
               .scalar_one())


def try_lock(conn: "Connection", model_id: str) -> bool:
    """Take the per-model scoring lock for ``conn``'s transaction; False when another scorer holds it."""
    return bool(conn.execute(select(func.pg_try_advisory_xact_lock(locks.scoring(model_id)))).scalar_one())


def stream_pending(conn: "Connection", model_id: str, batch: int, *, since: dt.date | None = None,
                   rescore: bool = False) -> Iterator[Sequence[Any]]:
    """Lists of ``(patent_id, abstract)`` rows, ``batch`` at a time, read through a server-side cursor so
    memory stays flat however large the corpus (``conn`` must stay in its transaction meanwhile)."""
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(_patents(model_id, since, rescore))
    yield from result.partitions()


def write(conn: "Connection", model_id: str, rows: Sequence[dict[str, Any]], patent_ids: Sequence[str],
          replace: bool) -> int:
    """Store the suggestions of ``patent_ids`` (``rows`` hold ``patent_id, rank, subclass, score, selected``);
    ``replace`` first removes what ``model_id`` said of them before. Returns the rows inserted.

    Call it inside one transaction per batch: a patent's rows arrive together or not at all.
    """
    if replace and patent_ids:
        conn.execute(delete(SUGGESTIONS).where(SUGGESTIONS.c.model_id == model_id,
                                               SUGGESTIONS.c.patent_id.in_(list(patent_ids))))
    if not rows:
        return 0
    # A concurrent scorer of the same model is kept out by the lock; DO NOTHING is the belt to its braces.
    stmt = pg_insert(SUGGESTIONS).values([{**r, "model_id": model_id} for r in rows]).on_conflict_do_nothing()
    return int(conn.execute(stmt).rowcount or 0)


def stream(conn: "Connection", model_id: str, *, since: dt.date | None = None, selected_only: bool = False,
           batch: int = 5000) -> Iterator[dict[str, Any]]:
    """A model's suggestions as dicts of :data:`COLUMNS`, by patent then rank, through a server-side cursor."""
    s = SUGGESTIONS
    query = select(*[s.c[c] for c in COLUMNS]).where(s.c.model_id == model_id)
    if selected_only:
        query = query.where(s.c.selected.is_(true()))
    if since is not None:
        query = query.select_from(s.join(PATENTS, PATENTS.c.patent_id == s.c.patent_id)).where(
            and_(cast(PATENTS.c.first_seen_at, Date) >= since))
    query = query.order_by(s.c.patent_id, s.c.rank)
    for row in conn.execution_options(stream_results=True, yield_per=batch).execute(query):
        yield dict(row._mapping)
