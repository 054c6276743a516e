"""Format parsers: each turns a byte stream into patent, rejected and skipped records, streamed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from patentml.exceptions import IngestError
from patentml.ingest.formats._common import guarded
from patentml.ingest.records import Item
from patentml.ingest.sources import FORMATS, SourceUnit, plan_sources

Parser = Callable[[BinaryIO, str], Iterator[Item]]


# A registry of small functions that import their module only when asked, as Annif does for backends.
def _jsonl() -> Parser:
    from patentml.ingest.formats.jsonl import parse_jsonl

    return parse_jsonl


def _uspto2m() -> Parser:
    from patentml.ingest.formats.uspto2m import parse_uspto2m

    return parse_uspto2m


def _uspto_xml() -> Parser:
    from patentml.ingest.formats.usptoxml import parse_uspto_xml

    return parse_uspto_xml


_STREAM_PARSERS: dict[str, Callable[[], Parser]] = {
    "jsonl": _jsonl,
    "uspto2m": _uspto2m,
    "uspto-xml": _uspto_xml,
}


def get_parser(fmt: str) -> Parser:
    """The parser of a single-stream format (every format but ``patentsview``, which joins three)."""
    if fmt == "patentsview":
        raise IngestError(
            "patentsview joins three tables: use iter_items() on a planned unit or parse_patentsview()"
        )
    if fmt not in _STREAM_PARSERS:
        raise IngestError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _STREAM_PARSERS[fmt]()


def parse_stream(fmt: str, stream: BinaryIO, source: str) -> Iterator[Item]:
    """Items of one open stream; a stream that breaks off ends with a rejected record, not an exception."""
    return guarded(get_parser(fmt)(stream, source), source)


def iter_items(unit: SourceUnit, **patentsview_options: Any) -> Iterator[Item]:
    """Items of one planned unit (see ``plan_sources``), each with ``source`` set to ``unit.name``."""
    if unit.format == "patentsview":
        from patentml.ingest.formats.patentsview import parse_patentsview

        yield from parse_patentsview(*unit.streams, source=unit.name, **patentsview_options)
        return
    (ref,) = unit.streams
    parser = get_parser(unit.format)
    with ref.open() as stream:
        yield from guarded(parser(stream, unit.name), unit.name)


def parse_sources(
    specs: Sequence[str | Path], forced_format: str | None = None
) -> Iterator[tuple[SourceUnit, Item]]:
    """Every item of every source in ``specs`` with the unit it came from: a convenience over plan + iter."""
    for unit in plan_sources(specs, forced_format):
        for item in iter_items(unit):
            yield unit, item
