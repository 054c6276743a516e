"""What an ingest run did, as lines for people (``patentml ingest``); corpus counts are in :mod:`patentml.db.corpus`."""

from __future__ import annotations

from typing import Sequence

from patentml.ingest.loader import BatchSummary

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
