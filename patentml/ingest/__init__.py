"""Ingestion: find sources, parse them as streams, and load each as one atomic batch into Postgres."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from patentml.ingest.loader import BatchSummary, load_items

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from patentml.ingest.sources import SourceUnit

__all__ = ["BatchSummary", "ingest", "source_key"]

log = logging.getLogger(__name__)


def source_key(unit: "SourceUnit") -> str:
    """What identifies a source across runs: its format and file name, not the folder it was read from.

    Re-reading the same file from another path is then recognised as the same source (a no-op).
    """
    return f"{unit.format}:{Path(unit.name).name}"


def ingest(
    engine: "Engine", sources: Sequence[str | Path], fmt: str | None = None, progress: bool = False
) -> list[BatchSummary]:
    """Ingest every file, folder or glob in ``sources``; one batch (and one transaction) per file."""
    from patentml.ingest.formats import iter_items
    from patentml.ingest.sources import plan_sources

    plan = plan_sources(sources, fmt)  # raises before anything is written if a source is missing
    summaries = []
    for unit in plan:
        summary = load_items(
            engine, iter_items(unit), source=unit.name, source_key=source_key(unit), fmt=unit.format,
            progress=progress,
        )
        log.debug(summary.line())
        summaries.append(summary)
    return summaries
