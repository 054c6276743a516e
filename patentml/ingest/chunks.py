"""Parsed items in chunks of ready COPY text, built in a thread while Postgres stores the last chunk.

Parsing is Python work and storing is server work: a producer thread parses and renders one chunk
while the loader copies the previous one, so the two overlap on two cores. What crosses the thread
boundary is a finished :class:`Chunk`; counts are the producer's own until it is joined.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter

from patentml.ingest import copytext
from patentml.ingest.records import (
    REASON_CHARS,
    SNIPPET_CHARS,
    Item,
    PatentRecord,
    RejectedRecord,
    SkippedRecord,
    show_dropped,
)
from patentml.textio import clip

#: Rendered bytes (of new-record rows) that make a chunk; what the loader holds is a few chunks.
CHUNK_BYTES = 4 << 20
#: Records that make a chunk at most (the id probe of a chunk is one statement).
CHUNK_RECORDS = 8000
#: Rejected records and notes stored one by one per batch; the rest are counted in one summary row.
MAX_STORED_REJECTS = 10_000
_POSITION_CHARS = 200


@dataclass
class Chunk:
    """Usable records with their rows as new patents (the lists are aligned), and staged rejects.

    ``repeats`` says a patent id occurs twice in the chunk: only then, or when some patent turns
    out to be stored already, does the loader look at records one by one.
    """

    ordinals: list[int] = field(default_factory=list)
    records: list[PatentRecord] = field(default_factory=list)
    patents: list[bytes] = field(default_factory=list)
    labels: list[bytes] = field(default_factory=list)
    sources: list[bytes] = field(default_factory=list)
    rejects: list[bytes] = field(default_factory=list)  # stage rows of rejected input and notes
    size: int = 0
    repeats: bool = False
    # (patent id, ordinal, record, patents row, labels rows, sources row) while the chunk fills
    _entries: list[tuple[str, int, PatentRecord, bytes, bytes, bytes]] = field(default_factory=list)

    def add(self, ordinal: int, record: PatentRecord, patent: bytes, labels: bytes, source: bytes) -> None:
        self._entries.append((record.patent_id, ordinal, record, patent, labels, source))
        self.size += len(patent) + len(labels) + len(source)

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> "Chunk":
        """The rows in patent id order (Postgres then fills each index page by page, not at random),
        in aligned lists; repeated ids end up side by side, which is how they are found."""
        entries = self._entries
        entries.sort(key=itemgetter(0))
        self.repeats = any(a[0] == b[0] for a, b in zip(entries, entries[1:]))
        self.ordinals = [e[1] for e in entries]
        self.records = [e[2] for e in entries]
        self.patents = [e[3] for e in entries]
        self.labels = [e[4] for e in entries]
        self.sources = [e[5] for e in entries]
        self._entries = []
        return self


@dataclass
class Tally:
    """What the producer counted; read by the loader once the producer is done."""

    read: int = 0
    skipped: int = 0
    rejected: int = 0
    labels_dropped: int = 0
    unlabelled: int = 0
    staged_rejects: int = 0  # reject and note rows written to stage (at most MAX_STORED_REJECTS)
    overflow: int = 0  # reject and note rows beyond the cap: counted, not stored
    first_overflow: str | None = None
    broke_off: RejectedRecord | None = None  # where the file ended early, if it did


class ChunkBuilder:
    """Turns items into chunks; ``tally`` counts what went by."""

    def __init__(self, source_key: str, batch: int, max_rejects: int = MAX_STORED_REJECTS) -> None:
        self._key = copytext.esc(source_key)
        self._batch = str(batch)
        self.max_rejects = max_rejects
        self.tally = Tally()

    def chunks(self, items: Iterable[Item]) -> Iterator[Chunk]:
        # The loop runs once per record: the common case (a usable record) is tested first and
        # costs a handful of operations besides rendering its rows.
        chunk = Chunk()
        tally = self.tally
        key, batch, new_rows = self._key, self._batch, copytext.new_rows
        for item in items:
            tally.read += 1
            ordinal = tally.read
            if type(item) is PatentRecord:
                try:
                    patent, labels, source = new_rows(item, key, batch)
                except UnicodeEncodeError:
                    # A lone surrogate cannot be stored; the record is rejected, the batch goes on.
                    tally.rejected += 1
                    problem = copytext.unicode_problem(item)
                    self._note(chunk, ordinal, item.position, problem, item.abstract, item.patent_id, True)
                    continue
                chunk.add(ordinal, item, patent, labels, source)
                if not item.labels:
                    tally.unlabelled += 1
                if item.dropped:
                    self._dropped(chunk, ordinal, item)
                if chunk.size >= CHUNK_BYTES or len(chunk) >= CHUNK_RECORDS:
                    yield chunk.close()
                    chunk = Chunk()
            elif isinstance(item, RejectedRecord):
                tally.rejected += 1
                if item.ends_source and tally.broke_off is None:
                    tally.broke_off = item
                self._note(chunk, ordinal, item.position, item.reason, item.snippet, item.patent_id, True)
            elif isinstance(item, SkippedRecord):
                tally.skipped += 1
            else:  # pragma: no cover - parsers only yield the three kinds
                raise TypeError(f"unexpected item {item!r}")
        if len(chunk) or chunk.rejects:
            yield chunk.close()

    def _dropped(self, chunk: Chunk, ordinal: int, record: PatentRecord) -> None:
        self.tally.labels_dropped += 1
        reason = (
            f"dropped labels that are not subclass codes: {show_dropped(record.dropped)} "
            "(the record is kept with its valid labels)"
        )
        self._note(chunk, ordinal, record.position, reason, None, record.patent_id, False)

    def _note(
        self,
        chunk: Chunk,
        ordinal: int,
        position: str,
        reason: str,
        snippet: str | None,
        patent_id: str | None,
        whole: bool,
    ) -> None:
        tally = self.tally
        if tally.staged_rejects >= self.max_rejects:
            tally.overflow += 1
            if tally.first_overflow is None:
                tally.first_overflow = clip(position, _POSITION_CHARS)
            return
        tally.staged_rejects += 1
        row = copytext.reject_row(
            ordinal,
            clip(position, _POSITION_CHARS),
            clip(reason, REASON_CHARS),
            None if snippet is None else snippet[:SNIPPET_CHARS],
            patent_id,
            whole,
        )
        chunk.rejects.append(row)


class Producer:
    """Runs ``builder.chunks(items)`` in a thread; iterate to get chunks, ``stop()`` to abandon it.

    An exception raised while parsing (even ``KeyboardInterrupt``) is re-raised by the iteration,
    in the loader's thread, as what the parser raised.
    """

    _DONE = object()

    def __init__(self, builder: ChunkBuilder, items: Iterable[Item], depth: int = 2) -> None:
        self._builder = builder
        self._items = items
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="patentml-ingest-parse", daemon=True)
        self._thread.start()

    def _put(self, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for chunk in self._builder.chunks(self._items):
                if not self._put(chunk):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the loader's thread
            self._put(exc)
            return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            value = self._queue.get()
            if value is self._DONE:
                self._thread.join()
                return
            if isinstance(value, BaseException):
                self._thread.join()
                raise value
            yield value  # type: ignore[misc]

    def stop(self) -> None:
        """Ask the thread to end at its next chunk and wait a little for it (it is a daemon)."""
        self._stop.set()
        self._thread.join(timeout=5)
