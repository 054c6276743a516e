"""USPTO-2M: one JSON array per year (``<YEAR>_USPTO.json``) of ``No``, ``Title``, ``Abstract``, labels."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import ijson

from patentml.ingest.formats._common import collapse, snippet, split_labels
from patentml.ingest.ids import canonical_patent_id
from patentml.ingest.records import Item, PatentRecord, RejectedRecord, show_dropped


def parse_uspto2m(stream: BinaryIO, source: str) -> Iterator[Item]:
    """One item per array element, position ``record N`` (1-based); a broken array ends with a rejected record."""
    # ijson walks the array element by element: a 300k-record year never sits in memory at once.
    events = ijson.parse(stream, use_float=True)
    try:
        first = next(events)
    except StopIteration:
        yield RejectedRecord(source, "start of file", "empty file: expected a JSON array of records")
        return
    except ijson.JSONError as exc:
        message = _one_line(exc)
        if "premature EOF" in message:  # yajl's word for a file with nothing in it
            yield RejectedRecord(source, "start of file", "empty file: expected a JSON array of records")
        else:
            yield RejectedRecord(source, "start of file", f"not a JSON array: {message}")
        return
    if first[1] != "start_array":
        yield RejectedRecord(
            source, "start of file", f"expected a JSON array of records (USPTO-2M), found a JSON {first[1]}"
        )
        return
    index = 0
    try:
        for obj in ijson.items(itertools.chain([first], events), "item"):
            index += 1
            yield record_from_object(obj, source, f"record {index}")
    except ijson.JSONError as exc:
        yield RejectedRecord(
            source,
            f"record {index + 1}",
            f"broken JSON array after record {index}: {_one_line(exc)}; the records before it were kept, "
            "the rest of the file was not read",
            ends_source=True,
        )


def _one_line(exc: Exception) -> str:
    # yajl's messages draw an arrow over several lines; the first line says what broke.
    return collapse(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def record_from_object(obj: Any, source: str, position: str) -> Item:
    """A USPTO-2M element as a record (scheme CPC), or the first reason it cannot be used.

    No ``Subclass_labels`` (absent, null or an empty list) is a new filing: a record without labels.
    """

    def reject(reason: str, patent_id: str | None = None) -> RejectedRecord:
        # Serialised only for a reject: a valid record never pays for its snippet.
        return RejectedRecord(source, position, reason, snippet(json.dumps(obj, ensure_ascii=False)), patent_id)

    if not isinstance(obj, dict):
        return reject(f"expected a JSON object, got a JSON {type(obj).__name__}")
    raw_id = obj.get("No")
    if not isinstance(raw_id, str) or not raw_id.strip():
        return reject("missing No (patent number)")
    try:
        patent_id = canonical_patent_id(raw_id)
    except ValueError as exc:
        return reject(str(exc))
    abstract = obj.get("Abstract")
    if abstract is None:
        return reject("missing Abstract", patent_id)
    if not isinstance(abstract, str):
        return reject(f"Abstract is a JSON {type(abstract).__name__}, not a string", patent_id)
    if not abstract.strip():
        return reject("empty Abstract", patent_id)
    raw_labels = obj.get("Subclass_labels")
    labels: list[str] = []
    dropped: list[str] = []
    if raw_labels is not None:
        if not isinstance(raw_labels, list):
            return reject(f"Subclass_labels is a JSON {type(raw_labels).__name__}, not a list", patent_id)
        labels, dropped = split_labels(raw_labels)
        if not labels and dropped:
            return reject(f"no valid label (got [{show_dropped(dropped)}])", patent_id)
    title = obj.get("Title")
    return PatentRecord(
        patent_id=patent_id,
        abstract=abstract.strip(),
        labels={"CPC": labels} if labels else {},
        source=source,
        position=position,
        title=(title.strip() or None) if isinstance(title, str) else None,
        date=None,
        dropped=dropped,
    )
