"""Load parsed records into Postgres: one batch, one transaction and one advisory lock per file.

A batch killed half-way leaves nothing behind, and running it again completes it. Batches are
serialised by an advisory lock, so two ingests of overlapping files never race on the same patent.

Records arrive in chunks (``chunks``), parsed in a thread while the previous chunk is stored. One
index probe per chunk tells which patents are new; those are copied straight into ``patents``,
``patent_labels`` and ``patent_sources`` (plain COPY, the fastest way in). The rest (patents already
stored, repeats inside the file) and rejected input go to a staging table and are settled in SQL
after the file is read (``staging``). A batch that fails still leaves its ``ingest_batches`` row,
with status ``failed`` and the reason, written after the rollback.
"""

from __future__ import annotations

import gc
import io
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from patentml.db import locks
from patentml.ingest import copytext, staging
from patentml.ingest.chunks import Chunk, ChunkBuilder, Producer
from patentml.ingest.records import REASON_CHARS, Item
from patentml.textio import clip

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

_COPY_PATENTS = f"COPY patents ({copytext.PATENT_COLUMNS}) FROM STDIN"
_COPY_LABELS = f"COPY patent_labels ({copytext.LABEL_COLUMNS}) FROM STDIN"
_COPY_SOURCES = f"COPY patent_sources ({copytext.SOURCE_COLUMNS}) FROM STDIN"
_COPY_STAGE = f"COPY stage ({copytext.STAGE_COLUMNS}) FROM STDIN"
_EXISTING = "SELECT patent_id FROM patents WHERE patent_id = ANY(%s::text[])"


@dataclass
class BatchSummary:
    """What one batch did; the same numbers are in its ``ingest_batches`` row.

    ``status`` is ``succeeded``, ``partial`` (the file broke off: what came before is stored) or
    ``failed`` (nothing was stored; ``message`` says why).
    """

    batch_id: int
    source: str
    format: str
    read: int = 0
    stored: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    skipped: int = 0
    labels_dropped: int = 0
    unlabelled: int = 0
    seconds: float = 0.0
    status: str = "succeeded"
    message: str | None = None

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def line(self) -> str:
        if self.status == "failed":
            return f"{self.source}: FAILED: {self.message}"
        text = (
            f"{self.source}: read {self.read}, stored {self.stored}, updated {self.updated}, "
            f"unchanged {self.unchanged}, rejected {self.rejected}, skipped {self.skipped}"
            + (f", unlabelled {self.unlabelled}" if self.unlabelled else "")
            + f" in {self.seconds:.1f} s ({self.rate:,.0f} records/s)"
        )
        return text + (f"; PARTIAL: {self.message}" if self.status == "partial" else "")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _copy(cur: Any, sql: str, parts: list[bytes]) -> None:
    if parts:
        data = b"".join(parts)
        cur.copy_expert(sql, io.BytesIO(data), size=len(data) + 1)  # one read: one hand-over of the GIL


def _store_chunk(cur: Any, chunk: Chunk) -> int:
    """Copy a chunk: new patents straight into the corpus, the rest into stage; returns how many were new."""
    records = chunk.records
    stage = chunk.rejects
    patents, labels, sources = chunk.patents, chunk.labels, chunk.sources
    if records:
        # Canonical ids are [A-Z0-9]: an array literal needs no quoting, and one text parameter
        # costs far less to send than a list adapted element by element.
        cur.execute(_EXISTING, ("{" + ",".join(r.patent_id for r in records) + "}",))
        taken = {row[0] for row in cur.fetchall()}
        if taken or chunk.repeats:  # stored before, or earlier in this file: settled in SQL later
            keep = []
            for i, record in enumerate(records):
                if record.patent_id in taken:
                    stage.append(copytext.stage_row(chunk.ordinals[i], record))
                else:
                    taken.add(record.patent_id)
                    keep.append(i)
            patents, labels, sources = ([rows[i] for i in keep] for rows in (patents, labels, sources))
        _copy(cur, _COPY_PATENTS, patents)
        _copy(cur, _COPY_LABELS, labels)
        _copy(cur, _COPY_SOURCES, sources)
    _copy(cur, _COPY_STAGE, stage)
    return len(patents)


def _finish(
    cur: Any, summary: BatchSummary, builder: ChunkBuilder, params: dict[str, object], staged_records: bool
) -> None:
    tally = builder.tally
    settled = staging.settle(cur, params) if staged_records else staging.Settled()
    staging.store_rejects(cur, params, builder.max_rejects, tally.overflow, tally.first_overflow)
    summary.read, summary.skipped = tally.read, tally.skipped
    summary.labels_dropped, summary.unlabelled = tally.labels_dropped, tally.unlabelled
    summary.stored += settled.stored
    summary.updated = settled.updated
    summary.rejected = tally.rejected + settled.conflicts
    summary.unchanged = summary.read - summary.stored - summary.updated - summary.rejected - summary.skipped
    broke = tally.broke_off
    if broke is not None:
        # Positions of a break read "after line 41" or "start of file"; others name the record.
        where = broke.position if broke.position.startswith(("after ", "start ")) else f"at {broke.position}"
        summary.status = "partial"
        summary.message = clip(f"the file broke off {where}: {broke.reason}", REASON_CHARS)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a batch runs, back as it was afterwards.

    Parsed records hold no reference cycles (reference counting frees them), but every young-
    generation collection walks the thousands of records a chunk holds: about a tenth of the parse.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_FINISH_BATCH = """
UPDATE ingest_batches SET status = %(status)s, finished_at = now(), n_read = %(read)s, n_stored = %(stored)s,
    n_updated = %(updated)s, n_unchanged = %(unchanged)s, n_rejected = %(rejected)s, n_skipped = %(skipped)s,
    n_labels_dropped = %(labels_dropped)s, n_unlabelled = %(unlabelled)s, seconds = %(seconds)s,
    message = %(message)s
WHERE batch_id = %(batch_id)s
"""


def load_items(
    engine: "Engine",
    items: Iterable[Item],
    *,
    source: str,
    source_key: str,
    fmt: str,
    progress: bool = False,
    keep_going: bool = False,
) -> BatchSummary:
    """Store one file's parsed items as one batch, in one transaction; returns its summary.

    On any error the transaction is rolled back and a ``failed`` row is written for the batch (when
    the database still answers); then the error is raised again, or with ``keep_going`` (an
    ``Exception``, not an interrupt) returned as the ``failed`` summary.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    raw = engine.raw_connection()
    batch_id: int | None = None
    producer: Producer | None = None
    try:
        cur = raw.cursor()
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (locks.INGEST,))
        cur.execute(
            "INSERT INTO ingest_batches (source, format, status) VALUES (%s, %s, 'running') RETURNING batch_id",
            (source, fmt),
        )
        batch_id = cur.fetchone()[0]
        summary = BatchSummary(batch_id=batch_id, source=source, format=fmt)
        params: dict[str, object] = {"source": source_key, "batch": batch_id, "name": source}
        cur.execute(staging.STAGE_DDL)

        builder = ChunkBuilder(source_key, batch_id)
        # Without a bar the items go straight to the producer: a disabled tqdm still wraps each one.
        bar = tqdm(items, desc=Path(source).name, unit=" rec", mininterval=0.5) if progress else None
        staged_records = False
        with _collector_paused():
            producer = Producer(builder, items if bar is None else bar)
            try:
                for chunk in producer:
                    new = _store_chunk(cur, chunk)
                    summary.stored += new
                    staged_records = staged_records or new < len(chunk.records)
            finally:
                producer.stop()
                if bar is not None:
                    bar.close()

        _finish(cur, summary, builder, params, staged_records)
        summary.seconds = time.perf_counter() - started
        cur.execute(_FINISH_BATCH, summary.as_dict())
        raw.commit()
        return summary
    except BaseException as exc:
        if producer is not None:
            producer.stop()
        _rollback(raw)
        message = failure_message(exc)
        written = record_failure(engine, batch_id, source, fmt, message, time.perf_counter() - started)
        if keep_going and isinstance(exc, Exception):
            log.debug("batch of %s failed", source, exc_info=True)
            return BatchSummary(written or 0, source, fmt, status="failed", message=message)
        raise
    finally:
        _close(raw)


def _rollback(raw: Any) -> None:
    try:
        raw.rollback()
    except Exception as exc:  # the connection is gone (server restarted): nothing to roll back there
        log.debug("rollback failed: %s", exc)
        raw.invalidate()  # never handed out again by the pool


def _close(raw: Any) -> None:
    try:
        if getattr(raw.dbapi_connection, "closed", 0):  # psycopg2: non-zero once the server has gone
            raw.invalidate()
        raw.close()
    except Exception as exc:  # noqa: BLE001 - as above
        log.debug("close failed: %s", exc)


def failure_message(exc: BaseException) -> str:
    """What a failed batch says: the error's kind and first line, never a traceback."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
    return clip(f"{kind}: {first}" if first else kind, REASON_CHARS)


def record_failure(
    engine: "Engine", batch_id: int | None, source: str, fmt: str, message: str, seconds: float = 0.0
) -> int | None:
    """Write (or rewrite) a ``failed`` ``ingest_batches`` row; returns its id, None if the database is gone.

    A rolled-back batch's id was taken from the sequence and is never handed out again: it is reused.
    """
    sql = """
        INSERT INTO ingest_batches (batch_id, source, format, status, finished_at, seconds, message)
        VALUES (coalesce(%s, nextval(pg_get_serial_sequence('ingest_batches', 'batch_id'))),
                %s, %s, 'failed', now(), %s, %s)
        ON CONFLICT (batch_id) DO UPDATE SET status = 'failed', finished_at = now(), message = excluded.message
        RETURNING batch_id
    """
    try:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(sql, (batch_id, source, fmt[:32], seconds, clip(message, REASON_CHARS)))
            written = cur.fetchone()[0]
            raw.commit()
            return int(written)
        finally:
            raw.close()
    except Exception as exc:  # noqa: BLE001 - the original error matters more than this one
        log.warning("could not record the failed batch of %s: %s", source, exc)
        return None
