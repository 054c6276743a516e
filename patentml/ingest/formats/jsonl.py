"""JSON Lines: one object per line with ``id``, ``title``, ``abstract``, ``labels``, ``label_scheme``, ``date``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from patentml.ingest.formats._common import parse_date, snippet, split_labels
from patentml.ingest.ids import canonical_patent_id
from patentml.ingest.records import SCHEMES, SNIPPET_CHARS, Item, PatentRecord, RejectedRecord, show_dropped
from patentml.textio import BOM, MAX_LINE_BYTES, OverlongLine, iter_lines, undecodable


def parse_jsonl(stream: BinaryIO, source: str, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Item]:
    """One item per non-blank line; position ``line N`` (1-based, blank lines counted).

    A line longer than ``max_line_bytes`` is rejected without being held in memory.
    """
    # Lines are read as bytes and decoded one by one, so one bad byte rejects one line, not the file.
    for number, raw in enumerate(iter_lines(stream, max_line_bytes), 1):
        position = f"line {number}"
        if isinstance(raw, OverlongLine):
            head = raw.head.decode("utf-8", "replace")
            yield RejectedRecord(source, position, raw.describe(max_line_bytes), snippet(head))
            continue
        if number == 1:
            raw = raw.removeprefix(BOM)
        # The common line is strict JSON in valid UTF-8: orjson parses it at a third of the cost of
        # json. Anything else (a lone surrogate escape, a huge integer, NaN, broken JSON) takes the
        # slow path, which reads it as the json module does and says precisely what is wrong.
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is not dict:
            item = _slow_line(raw, source, position)
            if item is not None:
                yield item
            continue
        yield record_from_object(obj, source, position, raw)


def _slow_line(raw: bytes, source: str, position: str) -> Item | None:
    """The item of a line the fast path did not take (None for a blank line, which is no record)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RejectedRecord(
            source,
            position,
            f"line is not valid UTF-8: {undecodable(raw, exc)} of the line",
            snippet(raw.decode("utf-8", "replace").rstrip("\r\n")),
        )
    if not text.strip():
        return None
    text = text.rstrip("\r\n")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return RejectedRecord(source, position, f"broken JSON: {exc.msg} (column {exc.colno})", snippet(text))
    if not isinstance(obj, dict):
        return RejectedRecord(
            source, position, f"expected a JSON object, got a JSON {type(obj).__name__}", snippet(text)
        )
    return record_from_object(obj, source, position, text)  # an object after leading whitespace


def _reject(
    source: str, position: str, reason: str, text: str | bytes, patent_id: str | None = None
) -> RejectedRecord:
    if isinstance(text, bytes):  # only the start is shown: decode no more of a long line than that
        text = text[: 4 * SNIPPET_CHARS].decode("utf-8", "replace").rstrip("\r\n")
    return RejectedRecord(source, position, reason, snippet(text), patent_id)


def record_from_object(obj: dict[str, Any], source: str, position: str, text: str | bytes) -> Item:
    """A JSON Lines object as a record, or the first reason it cannot be used.

    No ``labels`` (absent, null or an empty list) is a new filing: a record without labels.
    """
    get = obj.get  # the checks run for every line: each is the cheapest that decides
    raw_id = get("id")
    if type(raw_id) is int:
        raw_id = str(raw_id)  # a bare number is a US number written without quotes
    if raw_id is None or (type(raw_id) is str and not raw_id.strip()):
        return _reject(source, position, "missing id", text)
    try:
        patent_id = canonical_patent_id(raw_id)
    except ValueError as exc:
        return _reject(source, position, str(exc), text)

    abstract = get("abstract")
    if type(abstract) is not str:
        if "abstract" not in obj:
            return _reject(source, position, "missing abstract", text, patent_id)
        if abstract is None:
            return _reject(source, position, "null abstract", text, patent_id)
        reason = f"abstract is a JSON {type(abstract).__name__}, not a string"
        return _reject(source, position, reason, text, patent_id)
    abstract = abstract.strip()
    if not abstract:
        return _reject(source, position, "empty abstract", text, patent_id)

    title = get("title")
    if title is not None:
        if type(title) is not str:
            return _reject(source, position, f"title is a JSON {type(title).__name__}, not a string", text, patent_id)
        title = title.strip() or None

    raw_date = get("date")
    date = None
    if raw_date is not None and raw_date != "":
        try:
            date = parse_date(raw_date) if type(raw_date) is str else parse_date(repr(raw_date))
        except ValueError as exc:
            return _reject(source, position, str(exc), text, patent_id)

    scheme = get("label_scheme") or "CPC"
    if scheme not in SCHEMES:
        if type(scheme) is not str or scheme.strip().upper() not in SCHEMES:
            reason = f"unknown label_scheme {scheme!r} (expected {' or '.join(SCHEMES)})"
            return _reject(source, position, reason, text, patent_id)
        scheme = scheme.strip().upper()

    raw_labels = get("labels")
    labels: list[str] = []
    dropped: list[str] = []
    if raw_labels is not None:
        if type(raw_labels) is not list:
            reason = f"labels is a JSON {type(raw_labels).__name__}, not a list"
            return _reject(source, position, reason, text, patent_id)
        labels, dropped = split_labels(raw_labels)
        if not labels and dropped:
            return _reject(source, position, f"no valid label (got [{show_dropped(dropped)}])", text, patent_id)
    return PatentRecord(patent_id, abstract, {scheme: labels} if labels else {}, source, position, title, date, dropped)
