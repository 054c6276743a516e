"""What the corpus holds and what an ingest run did, as lines for people (``db status``, ``ingest``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from patentml.ingest.loader import BatchSummary

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

# (what is counted, SQL); unlabelled patents are new filings: stored, scored, in no split.
_COUNTS = (
    ("patents", "SELECT count(*) FROM patents"),
    ("unlabelled patents",
     "SELECT count(*) FROM patents p WHERE NOT EXISTS (SELECT 1 FROM patent_labels l WHERE l.patent_id = p.patent_id)"),
    ("CPC labels", "SELECT count(*) FROM patent_labels WHERE scheme = 'CPC'"),
    ("IPC labels", "SELECT count(*) FROM patent_labels WHERE scheme = 'IPC'"),
    ("patents with CPC", "SELECT count(DISTINCT patent_id) FROM patent_labels WHERE scheme = 'CPC'"),
    ("patents with IPC", "SELECT count(DISTINCT patent_id) FROM patent_labels WHERE scheme = 'IPC'"),
    ("ingest batches", "SELECT count(*) FROM ingest_batches"),
    ("failed batches", "SELECT count(*) FROM ingest_batches WHERE status IN ('failed', 'partial')"),
    ("rejected records", "SELECT count(*) FROM rejected_records WHERE whole"),
)


def corpus_counts(engine: "Engine") -> list[tuple[str, int]]:
    """``(name, count)`` of what the corpus tables hold, in one statement."""
    from sqlalchemy import text

    sql = "SELECT " + ", ".join(f"({query})" for _, query in _COUNTS)
    with engine.connect() as conn:
        row = conn.execute(text(sql)).one()
    return [(name, int(value)) for (name, _), value in zip(_COUNTS, row)]


_TOTALS = ("read", "stored", "updated", "unchanged", "rejected", "skipped", "unlabelled")


def summary_lines(summaries: Sequence[BatchSummary]) -> list[str]:
    """One line per batch, then a total when there are several and a count of the batches that failed."""
    lines = [s.line() for s in summaries]
    if len(summaries) > 1:
        total = {key: sum(getattr(s, key) for s in summaries) for key in _TOTALS}
        seconds = sum(s.seconds for s in summaries)
        rate = total["read"] / seconds if seconds else 0.0
        lines.append(
            "total: " + ", ".join(f"{key} {total[key]}" for key in _TOTALS)
            + f" in {seconds:.1f} s ({rate:,.0f} records/s)"
        )
    bad = [s for s in summaries if not s.ok]
    if bad:
        lines.append(f"{len(bad)} of {len(summaries)} sources failed or were read only in part: "
                     + ", ".join(f"{s.source} ({s.status})" for s in bad))
    return lines
