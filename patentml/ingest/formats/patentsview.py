"""PatentsView bulk TSV: three tables joined on patent id by an external merge sort, in bounded memory."""

from __future__ import annotations

import csv
import heapq
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

from patentml.exceptions import IngestError
from patentml.ingest.formats._common import (
    TRUNCATION_ERRORS,
    parse_date,
    snippet,
    split_labels,
    truncation_reject,
)
from patentml.ingest.ids import canonical_patent_id, normalise_label
from patentml.ingest.records import Item, PatentRecord, RejectedRecord, SkippedRecord, show_dropped
from patentml.ingest.sources import StreamRef, list_streams
from patentml.textio import MAX_LINE_BYTES, OverlongLine, iter_lines

#: Memory (estimated from object sizes) held per table while sorting, and again while merging.
CHUNK_BYTES = 64 << 20
#: Runs merged at once; more runs are merged in passes so open files and buffers stay bounded.
MAX_RUNS = 128
#: Smallest block of rows pickled together in a run file (one pickle per row would be slow).
MIN_BLOCK_BYTES = 4096
#: Largest field and line we read: abstracts are far below it, but csv's default of 128 KiB is not
#: safe; a longer line is rejected without being held whole.
FIELD_LIMIT = MAX_LINE_BYTES

_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by surrogateescape

# Row layouts after reading; the canonical id comes first so tuples sort by it.
#   patent:   (id, line, patent_type, patent_date, patent_title)
#   abstract: (id, line, patent_abstract)
#   cpc:      (id, cpc_sequence, line, code)
Row = tuple[Any, ...]


class _Lines:
    """Decoded lines for ``csv.reader``, each at most ``FIELD_LIMIT`` bytes; ``number`` counts them all.

    An overlong line raises ``csv.Error`` from ``__next__`` (the reader passes it on and can be
    called again), so it rejects its row like any malformed one.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._lines = iter_lines(stream, FIELD_LIMIT)
        self.number = 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        self.number += 1
        if isinstance(raw, OverlongLine):
            raise csv.Error(raw.describe(FIELD_LIMIT))
        # surrogateescape: an undecodable byte rejects its row instead of stopping the file.
        return raw.decode("utf-8", "surrogateescape")


class _Spool:
    """Items set aside while sorting (rejected rows), kept on disk so a bad file cannot fill memory."""

    def __init__(self, folder: str) -> None:
        self._file = tempfile.TemporaryFile(dir=folder)
        self.count = 0
        #: Tables that were not read to their end (truncated, empty, lacking a column).
        self.broken: set[str] = set()

    def add(self, item: Item, table: str | None = None) -> None:
        # One pickle per item: a shared Pickler/Unpickler memo would keep every item alive.
        pickle.dump(item, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1
        if isinstance(item, RejectedRecord) and item.ends_source and table is not None:
            self.broken.add(table)

    def read(self) -> Iterator[Item]:
        self._file.flush()
        self._file.seek(0)
        for _ in range(self.count):
            yield pickle.load(self._file)
        self._file.close()


def _as_ref(stream: StreamRef | str | Path) -> StreamRef:
    if isinstance(stream, StreamRef):
        return stream
    refs = list_streams(stream)
    if len(refs) != 1:
        raise IngestError(f"{stream}: expected one PatentsView table, found {len(refs)} streams")
    return refs[0]


def _read_table(
    ref: StreamRef, columns: tuple[str, ...], required: tuple[str, ...], source: str, rejects: _Spool
) -> Iterator[tuple[int, list[str | None]]]:
    """``(line, values of columns)`` per data row; bad rows, missing columns and truncation go to ``rejects``."""
    table = ref.base_name
    last: str | None = None
    try:
        with ref.open() as stream:
            lines = _Lines(stream)
            reader = csv.reader(lines, delimiter="\t", quotechar='"')
            header = next(reader, None)
            if header is None:
                rejects.add(
                    RejectedRecord(source, f"{table} line 1", f"{table} is empty: expected a header row", ends_source=True),
                    table,
                )
                return
            header = [name.strip().lstrip("\ufeff") for name in header]
            missing = [name for name in required if name not in header]
            if missing:
                rejects.add(
                    RejectedRecord(
                        source,
                        f"{table} line 1",
                        f"{table} lacks the column(s) {', '.join(missing)}; the file was not read",
                        snippet("\t".join(header)),
                        ends_source=True,
                    ),
                    table,
                )
                return
            index = [header.index(name) if name in header else None for name in columns]
            end = lines.number
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    start, end = end + 1, lines.number
                    rejects.add(RejectedRecord(source, f"{table} line {start}", f"not valid TSV: {exc}"))
                    continue
                # A quoted field may span lines: a row starts on the line after the previous row.
                start, end = end + 1, lines.number
                if not row:
                    continue
                joined = "\t".join(row)
                if len(row) != len(header):
                    reason = f"expected {len(header)} tab-separated fields, found {len(row)}"
                    rejects.add(RejectedRecord(source, f"{table} line {start}", reason, snippet(joined)))
                    continue
                if _SURROGATE.search(joined):
                    shown = joined.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    position = f"{table} line {start}"
                    rejects.add(RejectedRecord(source, position, "row is not valid UTF-8", snippet(shown)))
                    continue
                last = f"{table} line {start}"
                yield start, [row[i].strip() if i is not None else None for i in index]
    except TRUNCATION_ERRORS as exc:
        rejects.add(truncation_reject(source, last, exc), table)


def _keyed(
    rows: Iterable[tuple[int, list[str | None]]], table: str, source: str, rejects: _Spool
) -> Iterator[tuple[str, int, list[str | None]]]:
    """Rows with their canonical patent id (first value); rows whose id is unusable are rejected."""
    for line, values in rows:
        try:
            key = canonical_patent_id(values[0] or "")
        except ValueError as exc:
            rejects.add(RejectedRecord(source, f"{table} line {line}", str(exc), snippet(values[0])))
            continue
        yield key, line, values


def _patent_rows(ref: StreamRef, source: str, rejects: _Spool) -> Iterator[Row]:
    columns = ("patent_id", "patent_type", "patent_date", "patent_title")
    rows = _read_table(ref, columns, ("patent_id",), source, rejects)
    for key, line, (_, kind, date, title) in _keyed(rows, ref.base_name, source, rejects):
        yield key, line, kind, date, title


def _abstract_rows(ref: StreamRef, source: str, rejects: _Spool) -> Iterator[Row]:
    rows = _read_table(ref, ("patent_id", "patent_abstract"), ("patent_id", "patent_abstract"), source, rejects)
    for key, line, (_, abstract) in _keyed(rows, ref.base_name, source, rejects):
        yield key, line, abstract


def cpc_code(section: str | None, cpc_class: str | None, subclass: str | None, group: str | None) -> str:
    """The subclass of one ``g_cpc_current`` row, whether ``cpc_subclass`` holds ``H04L`` or only ``L``.

    When nothing makes a subclass, the raw values are returned joined, to be reported as dropped.
    """
    section, cpc_class, subclass = section or "", cpc_class or "", subclass or ""
    if normalise_label(subclass):
        return subclass
    if len(cpc_class) == 3 and cpc_class[:1] == section:
        cpc_class = cpc_class[1:]  # "H04": the class column may repeat the section
    composed = section + cpc_class + subclass
    if normalise_label(composed):
        return composed
    if group and normalise_label(group):
        return group
    return " ".join(v for v in (section, cpc_class, subclass, group) if v) or "(empty)"


def _cpc_rows(ref: StreamRef, source: str, rejects: _Spool) -> Iterator[Row]:
    columns = ("patent_id", "cpc_sequence", "cpc_section", "cpc_class", "cpc_subclass", "cpc_group")
    table = ref.base_name
    rows = _read_table(ref, columns, ("patent_id", "cpc_subclass"), source, rejects)
    for key, line, (_, sequence, section, cpc_class, subclass, group) in _keyed(rows, table, source, rejects):
        try:
            # Without a sequence column the file order is the order; line numbers keep it.
            order = int(sequence) if sequence not in (None, "") else line
        except ValueError:
            reason = f"cpc_sequence {sequence!r} is not a number"
            rejects.add(RejectedRecord(source, f"{table} line {line}", reason))
            continue
        yield key, order, line, cpc_code(section, cpc_class, subclass, group)


def _row_size(row: Row) -> int:
    # What the row costs in memory, near enough: tuple header, pointers, small ints, ASCII strings.
    return 56 + 8 * len(row) + sum(49 + len(v) if isinstance(v, str) else 28 for v in row)


def _write_run(rows: Iterable[Row], folder: str, block_bytes: int) -> str:
    handle, path = tempfile.mkstemp(dir=folder, suffix=".run")
    with os.fdopen(handle, "wb") as out:
        block: list[Row] = []
        size = 0
        for row in rows:
            block.append(row)
            size += _row_size(row)
            if size >= block_bytes:
                # A pickle per block, never a shared Pickler: its memo would hold every row written.
                pickle.dump(block, out, protocol=pickle.HIGHEST_PROTOCOL)
                block, size = [], 0
        if block:
            pickle.dump(block, out, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _read_run(path: str) -> Iterator[Row]:
    with open(path, "rb") as run:
        while True:
            try:
                block = pickle.load(run)  # a fresh Unpickler each time: its memo grows otherwise
            except EOFError:
                break
            yield from block
    os.unlink(path)


def external_sort(rows: Iterable[Row], folder: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Row]:
    """``rows`` sorted, holding about ``chunk_bytes`` in memory; sorted runs spill to ``folder``.

    Reads all of ``rows`` before returning (so errors found while reading are known), then merges
    lazily. A merge reads one block per run and merges at most ``MAX_RUNS`` runs, with blocks of
    ``chunk_bytes / MAX_RUNS``: merging holds about ``chunk_bytes`` too, however long the table.
    """
    block_bytes = max(chunk_bytes // MAX_RUNS, MIN_BLOCK_BYTES)
    runs: list[str] = []
    chunk: list[Row] = []
    size = 0
    for row in rows:
        chunk.append(row)
        size += _row_size(row)
        if size >= chunk_bytes:
            chunk.sort()
            runs.append(_write_run(chunk, folder, block_bytes))
            chunk, size = [], 0
    chunk.sort()
    if not runs:
        return iter(chunk)  # the table fits in one chunk: no disk at all
    if chunk:
        runs.append(_write_run(chunk, folder, block_bytes))
    del chunk
    while len(runs) > MAX_RUNS:
        merged = _write_run(heapq.merge(*(_read_run(r) for r in runs[:MAX_RUNS])), folder, block_bytes)
        runs = runs[MAX_RUNS:] + [merged]
    return heapq.merge(*(_read_run(r) for r in runs))


class _Cursor:
    """A sorted row stream read up to a patent id; rows of ids absent from ``g_patent`` are counted."""

    def __init__(self, rows: Iterator[Row], line_at: int) -> None:
        self._rows = rows
        self._line_at = line_at
        self._head: Row | None = next(rows, None)
        self.orphan_rows = 0
        self.orphan_ids = 0
        self.first_orphan: tuple[str, int] | None = None
        self._last_orphan: str | None = None

    def _advance(self, orphan: bool) -> Row:
        row = self._head
        assert row is not None
        if orphan:
            self.orphan_rows += 1
            if row[0] != self._last_orphan:
                self.orphan_ids += 1
                self._last_orphan = row[0]
            if self.first_orphan is None:
                self.first_orphan = (row[0], row[self._line_at])
        self._head = next(self._rows, None)
        return row

    def take(self, key: str) -> list[Row]:
        """The rows of ``key``; rows of smaller ids (no patent row) are skipped as orphans."""
        while self._head is not None and self._head[0] < key:
            self._advance(orphan=True)
        found = []
        while self._head is not None and self._head[0] == key:
            found.append(self._advance(orphan=False))
        return found

    def drain(self) -> None:
        while self._head is not None:
            self._advance(orphan=True)


def _join(
    patents: Iterator[Row],
    abstracts: _Cursor,
    cpcs: _Cursor,
    tables: tuple[str, str, str],
    source: str,
    cpc_broken: bool = False,
) -> Iterator[Item]:
    patent_table, abstract_table, cpc_table = tables
    for key, group in groupby(patents, key=itemgetter(0)):
        texts = [row[2] for row in abstracts.take(key) if row[2]]
        labels, dropped = split_labels(row[3] for row in cpcs.take(key))  # sorted by cpc_sequence
        for _, line, kind, raw_date, title in group:  # several rows only if g_patent repeats an id
            position = f"{patent_table} line {line}"
            if not texts:
                design = (kind or "").lower() == "design" or key.startswith("USD")
                reason = f"no abstract in {abstract_table}" + (" (design patent)" if design else "")
                yield RejectedRecord(source, position, reason, snippet(title), key)
                continue
            if not labels and (dropped or cpc_broken):
                # No row at all is a patent not classified yet (stored unlabelled), unless the
                # table broke off: then its rows may be in the part that was not read.
                reason = (
                    f"no CPC subclass in {cpc_table} (got [{show_dropped(list(dropped))}])"
                    if dropped
                    else f"no CPC subclass read: {cpc_table} was not read to its end, so the labels are unknown"
                )
                yield RejectedRecord(source, position, reason, snippet(title), key)
                continue
            try:
                date = parse_date(raw_date) if raw_date else None
            except ValueError:
                date = None  # the publisher's own record: a bad date costs the date, not the patent
            yield PatentRecord(
                patent_id=key,
                abstract=texts[0],
                labels={"CPC": list(labels)} if labels else {},
                source=source,
                position=position,
                title=title or None,
                date=date,
                dropped=list(dropped),
            )
    for cursor, table in ((abstracts, abstract_table), (cpcs, cpc_table)):
        cursor.drain()
        if cursor.first_orphan is not None:
            first_id, first_line = cursor.first_orphan
            yield SkippedRecord(
                source,
                f"{table} line {first_line}",
                f"{cursor.orphan_rows} row(s) for {cursor.orphan_ids} patent id(s) absent from {patent_table} "
                f"(first: {first_id}); not used",
            )


def parse_patentsview(
    patent: StreamRef | str | Path,
    abstract: StreamRef | str | Path,
    cpc: StreamRef | str | Path,
    *,
    source: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    tmp_dir: str | Path | None = None,
) -> Iterator[Item]:
    """Join the three tables on patent id; items come in patent id order.

    ``source`` (default: the folder of ``g_patent``) is every item's source; positions name the
    table and line (``g_patent.tsv line 12``). Rejected table rows come first, then one item per
    ``g_patent`` row, then one skipped item per table summarising rows of ids absent from
    ``g_patent``. Memory stays near ``chunk_bytes`` whatever the file sizes; sorted runs are
    written under ``tmp_dir`` (default: ``tmp`` under ``PATENTML_HOME``, never the system temporary
    folder, which may be small or shared) and removed afterwards.
    """
    refs = (_as_ref(patent), _as_ref(abstract), _as_ref(cpc))
    source = source or str(refs[0].path.parent)
    # Process-wide, but only ever raised: a long abstract must not end the file.
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    # The files are sorted by id in practice, but nothing promises it (nor that the order is the
    # canonical id's): sorting ourselves makes the join right for any order at a bounded cost.
    if tmp_dir is None:
        from patentml.settings import get_settings

        tmp_dir = get_settings().tmp_dir
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="patentml-patentsview-", dir=tmp_dir) as folder:
        rejects = _Spool(folder)
        patents = external_sort(_patent_rows(refs[0], source, rejects), folder, chunk_bytes)
        abstracts = _Cursor(external_sort(_abstract_rows(refs[1], source, rejects), folder, chunk_bytes), 1)
        cpcs = _Cursor(external_sort(_cpc_rows(refs[2], source, rejects), folder, chunk_bytes), 2)
        yield from rejects.read()
        tables = (refs[0].base_name, refs[1].base_name, refs[2].base_name)
        yield from _join(patents, abstracts, cpcs, tables, source, cpc_broken=tables[2] in rejects.broken)
