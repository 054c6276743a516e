"""Ingestion: find sources, parse them as streams, and load each as one atomic batch into Postgres."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from patentml.exceptions import IngestError
from patentml.ingest.loader import BatchSummary, load_items, record_failure
from patentml.ingest.records import REASON_CHARS
from patentml.textio import clip

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from patentml.ingest.sources import SourceUnit

__all__ = ["BatchSummary", "IncompleteIngestError", "ingest", "source_key"]

log = logging.getLogger(__name__)


class IncompleteIngestError(IngestError):
    """Some sources failed or were read only in part; every other source was ingested.

    ``summaries`` holds every batch of the run, the good ones too.
    """

    def __init__(self, summaries: list[BatchSummary]) -> None:
        self.summaries = summaries
        bad = [s for s in summaries if not s.ok]
        super().__init__(
            f"{len(bad)} of {len(summaries)} sources failed or were read only in part: "
            + "; ".join(f"{s.source}: {s.status} ({s.message})" for s in bad)
        )


def source_key(unit: "SourceUnit") -> str:
    """What identifies a source across runs: its format and file name, not the folder it was read from.

    Re-reading the same file from another path is then recognised as the same source (a no-op).
    """
    return f"{unit.format}:{Path(unit.name).name}"


def ingest(
    engine: "Engine",
    sources: Sequence[str | Path],
    fmt: str | None = None,
    progress: bool = False,
    *,
    strict: bool = True,
    work_dir: str | Path | None = None,
) -> list[BatchSummary]:
    """Ingest every file, folder or glob in ``sources``; one batch (and one transaction) per file.

    One bad source stops nothing else: a file that cannot be read or recognised, or whose batch
    fails, is a ``failed`` batch with its reason, and the other files are ingested. With
    ``strict`` (the default) an ``IncompleteIngestError`` holding every summary is raised at the
    end when any batch is not ``succeeded``; otherwise the summaries say it. A source that matches
    no file at all raises before anything is read. PatentsView sort runs go to ``work_dir``
    (default: ``tmp`` under ``PATENTML_HOME``).
    """
    from patentml.ingest.formats import iter_items
    from patentml.ingest.sources import plan_sources

    plan = plan_sources(sources, fmt, keep_going=True)
    summaries = []
    for unit in plan:
        if unit.error is not None:
            message = clip(unit.error, REASON_CHARS)
            batch_id = record_failure(engine, None, unit.name, unit.format, message)
            summary = BatchSummary(batch_id or 0, unit.name, unit.format, status="failed", message=message)
        else:
            options = {"tmp_dir": work_dir} if unit.format == "patentsview" else {}
            summary = load_items(
                engine, iter_items(unit, **options), source=unit.name, source_key=source_key(unit),
                fmt=unit.format, progress=progress, keep_going=True,
            )
        log.debug(summary.line())
        summaries.append(summary)
    if strict and not all(s.ok for s in summaries):
        raise IncompleteIngestError(summaries)
    return summaries
