"""Helpers every format parser shares: label splitting, dates, snippets and the truncation guard."""

from __future__ import annotations

import datetime as dt
import gzip
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from functools import lru_cache

from patentml.ingest.ids import MAX_LABEL_CHARS, normalise_label
from patentml.ingest.records import SNIPPET_CHARS, Item, RejectedRecord
from patentml.textio import clip

#: What a stream raises when the compressed file ends early or is corrupt mid-way.
TRUNCATION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    gzip.BadGzipFile,
    zipfile.BadZipFile,
    zlib.error,
)

_WHITESPACE = re.compile(r"\s+")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COMPACT_DATE = re.compile(r"[0-9]{8}")


def collapse(text: str) -> str:
    """Runs of whitespace (newlines, tabs) as one space, trimmed."""
    return _WHITESPACE.sub(" ", text).strip()


def snippet(text: str | None) -> str | None:
    """The start of the offending input, enough to recognise it."""
    return None if text is None else text[:SNIPPET_CHARS]


def split_labels(raw_labels: Iterable[object]) -> tuple[list[str], list[str]]:
    """Subclasses of ``raw_labels`` in source order without repeats, and the raw values that are not labels."""
    labels: list[str] = []
    dropped: list[str] = []
    known = _KNOWN
    for raw in raw_labels:
        subclass = known.get(raw) if type(raw) is str else None
        if subclass is None:
            subclass = normalise_label(raw) if isinstance(raw, str) else None
            if subclass is None:
                dropped.append(raw if isinstance(raw, str) else repr(raw))
                continue
            if len(known) < _KNOWN_MAX and len(raw) <= MAX_LABEL_CHARS:  # type: ignore[arg-type]
                known[raw] = subclass  # type: ignore[index]
        if subclass not in labels:
            labels.append(subclass)
    return labels, dropped


# Label spellings seen, with their subclass: a corpus repeats a few thousand of them millions of
# times, and a dict lookup is the cheapest test there is. Bounded, and only short spellings.
_KNOWN: dict[str, str] = {}
_KNOWN_MAX = 100_000


def parse_date(value: str) -> dt.date:
    """A date written ``YYYY-MM-DD`` or ``YYYYMMDD``; ``ValueError`` for anything else or an impossible day."""
    if len(value) > 32:
        raise ValueError(f"bad date {clip(value, 32)!r}: expected YYYY-MM-DD")
    return _parse_date(value)


@lru_cache(maxsize=4096)  # a weekly file has one date: parsing it once per record is waste
def _parse_date(value: str) -> dt.date:
    text = value.strip()
    if _COMPACT_DATE.fullmatch(text):
        text = f"{text[:4]}-{text[4:6]}-{text[6:]}"
    if not _ISO_DATE.fullmatch(text):
        raise ValueError(f"bad date {value!r}: expected YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"bad date {value!r}: {exc}") from None


def truncation_reject(source: str, after: str | None, exc: BaseException) -> RejectedRecord:
    """The record of a stream that broke off: where (after the last item read) and the low-level error."""
    return RejectedRecord(
        source=source,
        position=f"after {after}" if after else "start of file",
        reason=(
            f"the file ends early or is corrupt ({type(exc).__name__}: {exc}); "
            "records before this point were kept, the rest of the file was not read"
        ),
        ends_source=True,
    )


def guarded(items: Iterator[Item], source: str) -> Iterator[Item]:
    """``items``, ending with a rejected record instead of an exception when the stream breaks off."""
    last: str | None = None
    try:
        for item in items:
            last = item.position
            yield item
    except TRUNCATION_ERRORS as exc:
        # A truncated download is data to report, not a crash: what was read stays usable.
        yield truncation_reject(source, last, exc)
