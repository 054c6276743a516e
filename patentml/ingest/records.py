"""What format parsers yield: usable patent records and rejected ones, each with its position."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

#: Label schemes a record's labels can come under.
SCHEMES = ("CPC", "IPC")


@dataclass
class PatentRecord:
    """One usable patent: canonical id, text, and its labels per scheme (already cut to subclasses).

    ``labels`` maps a scheme (``CPC``/``IPC``) to subclasses in source order, deduplicated; the first
    one is the main label. ``dropped`` holds raw label values that were not subclass codes (the
    loader notes them in ``rejected_records`` while keeping the record).
    """

    patent_id: str
    abstract: str
    labels: dict[str, list[str]]
    source: str
    position: str
    title: str | None = None
    date: dt.date | None = None
    dropped: list[str] = field(default_factory=list)


@dataclass
class RejectedRecord:
    """Input that could not be used, with where it was and why; it is stored, never dropped silently."""

    source: str
    position: str
    reason: str
    snippet: str | None = None
    patent_id: str | None = None


@dataclass
class SkippedRecord:
    """Input that is valid but not a patent we index (e.g. a sequence listing in a weekly XML file)."""

    source: str
    position: str
    reason: str


Item = PatentRecord | RejectedRecord | SkippedRecord
