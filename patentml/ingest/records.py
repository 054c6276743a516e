"""What format parsers yield: usable patent records and rejected ones, each with its position."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from patentml.textio import clip

#: Label schemes a record's labels can come under.
SCHEMES = ("CPC", "IPC")
#: Characters of the offending input kept with a rejected record.
SNIPPET_CHARS = 300
#: Characters of a reason kept; a reason quoting a megabyte of input is cut (``textio.clip``).
REASON_CHARS = 1000
#: Dropped label values quoted in a reason, each cut to ``_SHOWN_CHARS``.
_SHOWN_LABELS = 20
_SHOWN_CHARS = 40


def show_dropped(dropped: list[str]) -> str:
    """Dropped label values for a reason: ``'XYZ', '12AB'``; long values and long lists are cut."""
    shown = ", ".join(repr(clip(d, _SHOWN_CHARS)) for d in dropped[:_SHOWN_LABELS])
    more = len(dropped) - _SHOWN_LABELS
    return shown + (f" and {more:,} more" if more > 0 else "")


@dataclass(slots=True)
class PatentRecord:
    """One usable patent: canonical id, text, and its labels per scheme (already cut to subclasses).

    ``labels`` maps a scheme (``CPC``/``IPC``) to subclasses in source order, deduplicated; the first
    one is the main label. Empty for a new filing that has no labels yet (stored unlabelled). ``dropped`` holds raw label values that were not subclass codes (the
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


@dataclass(slots=True)
class RejectedRecord:
    """Input that could not be used, with where it was and why; it is stored, never dropped silently.

    ``ends_source`` marks the break of a file that ends early or is corrupt: nothing after it was
    read, so its batch is ``partial``.
    """

    source: str
    position: str
    reason: str
    snippet: str | None = None
    patent_id: str | None = None
    ends_source: bool = False


@dataclass(slots=True)
class SkippedRecord:
    """Input that is valid but not a patent we index (e.g. a sequence listing in a weekly XML file)."""

    source: str
    position: str
    reason: str


Item = PatentRecord | RejectedRecord | SkippedRecord
