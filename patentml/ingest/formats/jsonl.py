"""JSON Lines: one object per line with ``id``, ``title``, ``abstract``, ``labels``, ``label_scheme``, ``date``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from patentml.ingest.formats._common import parse_date, snippet, split_labels
from patentml.ingest.ids import canonical_patent_id
from patentml.ingest.records import SCHEMES, Item, PatentRecord, RejectedRecord


def parse_jsonl(stream: BinaryIO, source: str) -> Iterator[Item]:
    """One item per non-blank line; position ``line N`` (1-based, blank lines counted)."""
    # Lines are read as bytes and decoded one by one, so one bad byte rejects one line, not the file.
    for number, raw in enumerate(stream, 1):
        position = f"line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RejectedRecord(
                source,
                position,
                f"line is not valid UTF-8: byte 0x{raw[exc.start]:02X} at byte {exc.start + 1} of the line",
                snippet(raw.decode("utf-8", "replace").rstrip("\r\n")),
            )
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        text = text.rstrip("\r\n")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RejectedRecord(source, position, f"broken JSON: {exc.msg} (column {exc.colno})", snippet(text))
            continue
        if not isinstance(obj, dict):
            yield RejectedRecord(
                source, position, f"expected a JSON object, got a JSON {type(obj).__name__}", snippet(text)
            )
            continue
        yield record_from_object(obj, source, position, text)


def _reject(source: str, position: str, reason: str, text: str, patent_id: str | None = None) -> RejectedRecord:
    return RejectedRecord(source, position, reason, snippet(text), patent_id)


def record_from_object(obj: dict[str, Any], source: str, position: str, text: str) -> Item:
    """A JSON Lines object as a record, or the first reason it cannot be used."""
    raw_id = obj.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)  # a bare number is a US number written without quotes
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return _reject(source, position, "missing id", text)
    try:
        patent_id = canonical_patent_id(raw_id)
    except ValueError as exc:
        return _reject(source, position, str(exc), text)

    abstract = obj.get("abstract")
    if "abstract" not in obj:
        return _reject(source, position, "missing abstract", text, patent_id)
    if abstract is None:
        return _reject(source, position, "null abstract", text, patent_id)
    if not isinstance(abstract, str):
        reason = f"abstract is a JSON {type(abstract).__name__}, not a string"
        return _reject(source, position, reason, text, patent_id)
    if not abstract.strip():
        return _reject(source, position, "empty abstract", text, patent_id)

    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        return _reject(source, position, f"title is a JSON {type(title).__name__}, not a string", text, patent_id)

    raw_date = obj.get("date")
    date = None
    if raw_date not in (None, ""):
        try:
            date = parse_date(raw_date) if isinstance(raw_date, str) else parse_date(repr(raw_date))
        except ValueError as exc:
            return _reject(source, position, str(exc), text, patent_id)

    scheme = obj.get("label_scheme") or "CPC"
    if not isinstance(scheme, str) or scheme.strip().upper() not in SCHEMES:
        return _reject(
            source, position, f"unknown label_scheme {scheme!r} (expected {' or '.join(SCHEMES)})", text, patent_id
        )
    scheme = scheme.strip().upper()

    raw_labels = obj.get("labels")
    if raw_labels is None:
        return _reject(source, position, "missing labels", text, patent_id)
    if not isinstance(raw_labels, list):
        reason = f"labels is a JSON {type(raw_labels).__name__}, not a list"
        return _reject(source, position, reason, text, patent_id)
    labels, dropped = split_labels(raw_labels)
    if not labels:
        got = f"got {dropped!r}" if dropped else "the list is empty"
        return _reject(source, position, f"no valid label ({got})", text, patent_id)

    return PatentRecord(
        patent_id=patent_id,
        abstract=abstract.strip(),
        labels={scheme: labels},
        source=source,
        position=position,
        title=(title.strip() or None) if title is not None else None,
        date=date,
        dropped=dropped,
    )
