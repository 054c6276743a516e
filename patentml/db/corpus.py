"""Read-only SQL about the corpus and its ingest batches, for ``patentml db status`` and the UI page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

#: What ``db status`` and the UI count, in display order (name -> SQL).
COUNTS = {
    "patents": "SELECT count(*) FROM patents",
    # unlabelled patents are new filings: stored and scored, in no split
    "unlabelled patents": ("SELECT count(*) FROM patents p WHERE NOT EXISTS "
                           "(SELECT 1 FROM patent_labels l WHERE l.patent_id = p.patent_id)"),
    "CPC labels": "SELECT count(*) FROM patent_labels WHERE scheme = 'CPC'",
    "IPC labels": "SELECT count(*) FROM patent_labels WHERE scheme = 'IPC'",
    "patents with CPC": "SELECT count(DISTINCT patent_id) FROM patent_labels WHERE scheme = 'CPC'",
    "patents with IPC": "SELECT count(DISTINCT patent_id) FROM patent_labels WHERE scheme = 'IPC'",
    "ingest batches": "SELECT count(*) FROM ingest_batches",
    "failed batches": "SELECT count(*) FROM ingest_batches WHERE status IN ('failed', 'partial')",
    "rejected records": "SELECT count(*) FROM rejected_records WHERE whole",
    "training runs": "SELECT count(*) FROM runs",
}

BATCHES_SQL = """
    SELECT b.batch_id, b.source, b.format, b.status, b.started_at, b.finished_at, b.seconds,
           b.n_read, b.n_stored, b.n_updated, b.n_unchanged, b.n_rejected, b.n_skipped,
           (SELECT rr.reason FROM rejected_records rr WHERE rr.batch_id = b.batch_id
             GROUP BY rr.reason ORDER BY count(*) DESC, rr.reason LIMIT 1) AS top_reason
    FROM ingest_batches b
    ORDER BY b.batch_id DESC
    LIMIT :limit
"""


def counts(conn: "Connection") -> dict[str, int]:
    """Every count of :data:`COUNTS`, in one round trip."""
    row = conn.execute(text("SELECT " + ", ".join(f"({sql})" for sql in COUNTS.values()))).one()
    return {name: int(value) for name, value in zip(COUNTS, row)}


def recent_batches(conn: "Connection", limit: int = 20) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(text(BATCHES_SQL), {"limit": limit})]
