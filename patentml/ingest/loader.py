"""Load parsed records into Postgres: one streamed COPY into a staging table, then set-based upserts.

Each source file is one batch and one transaction: a batch killed half-way leaves nothing behind,
and running it again completes it. Batches are serialised by an advisory lock, so two ingests of
overlapping files never race on the same patent.

The COPY is fed by the parser as it goes (``_CopyStream``): Postgres stores one block while the next
is parsed, and the client never holds more than a block. Records and rejected input share the
staging table (rejects carry a ``reason``), so one COPY serves both. After it, duplicates inside
the file are resolved (only when there are any), every record is classified once (``new``, ``same``
as what this source said last time, or ``check``), and each table is written in one statement per
kind of change; statements with nothing to do are not sent.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from patentml.db import locks
from patentml.ingest.records import Item, PatentRecord, RejectedRecord, SkippedRecord

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

#: Bytes of COPY text handed to Postgres at a time (what the client holds, besides one item).
BLOCK_BYTES = 1 << 18
SNIPPET_CHARS = 300

_SURROGATES = re.compile("[\ud800-\udfff]")
_NULL = r"\N"  # NULL in COPY text format


@dataclass
class BatchSummary:
    """What one batch did; the same numbers are in its ``ingest_batches`` row."""

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
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.source}: read {self.read}, stored {self.stored}, updated {self.updated}, "
            f"unchanged {self.unchanged}, rejected {self.rejected}, skipped {self.skipped} "
            f"in {self.seconds:.1f} s ({self.rate:,.0f} records/s)"
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _esc(value: object) -> str:
    """One field in COPY text format (NULL is \\N; NUL bytes cannot be stored in text and are dropped)."""
    if value is None:
        return r"\N"
    s = str(value)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s or "\x00" in s:
        s = (
            s.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\x00", "")
        )
    return s


def _array(labels: list[str] | None) -> str:
    # Subclass codes are [A-Z0-9]{4}: safe inside an array literal without quoting.
    return "{" + ",".join(labels) + "}" if labels else r"\N"


def _snippet(text: str | None) -> str | None:
    return None if text is None else text[:SNIPPET_CHARS]


def _unicode_problem(item: PatentRecord) -> str:
    """Why a record's text cannot be stored: a lone surrogate (JSON ``"\\ud800"`` decodes to one)."""
    for name in ("abstract", "title", "patent_id", "position"):
        value = getattr(item, name)
        match = _SURROGATES.search(value) if isinstance(value, str) else None
        if match is not None:
            code = ord(match.group())
            return (
                f"{name} is not valid Unicode: lone surrogate U+{code:04X} at character {match.start() + 1} "
                f"(an escaped \\u{code:04x} without its pair)"
            )
    return "text is not valid Unicode"  # pragma: no cover - encode() failed, so a field has one


_STAGE_COLUMNS = "ord, patent_id, title, abstract, date, labels_cpc, labels_ipc, position, reason, snippet, whole"
_STAGE_DDL = """
CREATE TEMP TABLE stage (
    ord integer, patent_id text, title text, abstract text, date date,
    labels_cpc text[], labels_ipc text[], position text,
    reason text, snippet text, whole boolean
) ON COMMIT DROP
"""
# Rows of stage with a reason are rejected input (whole = false: a stored record's dropped labels);
# the others are records.

_FIND_DUPLICATES = """
CREATE TEMP TABLE dups ON COMMIT DROP AS
SELECT patent_id FROM stage WHERE reason IS NULL GROUP BY patent_id HAVING count(*) > 1
"""

# Within one file a patent may appear more than once. Rows that disagree with the first row about
# a scheme's labels are rejected; rows under another scheme are merged (CPC in one record and IPC
# in another keep both sets); text comes from the first row. Only the rows of repeated ids are
# touched: they leave stage, and come back as one merged row per id plus the rejects.
_RESOLVE_DUPLICATES = """
CREATE TEMP TABLE dup_rows ON COMMIT DROP AS
SELECT s.* FROM stage s JOIN dups d USING (patent_id) WHERE s.reason IS NULL;
CREATE INDEX ON dup_rows (patent_id, ord);
ANALYZE dup_rows;
DELETE FROM stage s USING dups d WHERE s.patent_id = d.patent_id AND s.reason IS NULL;

CREATE TEMP TABLE conflicts ON COMMIT DROP AS
WITH firsts AS (
    SELECT DISTINCT ON (patent_id, scheme) patent_id, scheme, ord, labels, position
    FROM (
        SELECT patent_id, 'CPC' AS scheme, ord, labels_cpc AS labels, position FROM dup_rows
            WHERE labels_cpc IS NOT NULL
        UNION ALL
        SELECT patent_id, 'IPC', ord, labels_ipc, position FROM dup_rows WHERE labels_ipc IS NOT NULL
    ) s
    ORDER BY patent_id, scheme, ord
)
SELECT s.ord, s.patent_id, s.position,
       string_agg(f.scheme || ' labels ' || array_to_string(
           CASE f.scheme WHEN 'CPC' THEN s.labels_cpc ELSE s.labels_ipc END, ' ')
           || ' differ from ' || array_to_string(f.labels, ' ') || ' at ' || f.position, '; '
           ORDER BY f.scheme) AS why
FROM dup_rows s JOIN firsts f ON f.patent_id = s.patent_id AND s.ord > f.ord
WHERE (f.scheme = 'CPC' AND s.labels_cpc IS NOT NULL AND s.labels_cpc <> f.labels)
   OR (f.scheme = 'IPC' AND s.labels_ipc IS NOT NULL AND s.labels_ipc <> f.labels)
GROUP BY s.ord, s.patent_id, s.position;

DELETE FROM dup_rows d USING conflicts c WHERE d.ord = c.ord;

INSERT INTO stage (ord, patent_id, position, reason, snippet, whole)
SELECT c.ord, c.patent_id, c.position, 'duplicate patent id ' || c.patent_id || ' in this file with different labels: '
       || c.why || ' (the first record is kept)', NULL, true
FROM conflicts c;

INSERT INTO stage (ord, patent_id, title, abstract, date, labels_cpc, labels_ipc, position)
SELECT f.ord, f.patent_id, f.title, f.abstract, f.date,
       (SELECT x.labels_cpc FROM dup_rows x WHERE x.patent_id = f.patent_id AND x.labels_cpc IS NOT NULL
        ORDER BY x.ord LIMIT 1),
       (SELECT x.labels_ipc FROM dup_rows x WHERE x.patent_id = f.patent_id AND x.labels_ipc IS NOT NULL
        ORDER BY x.ord LIMIT 1),
       f.position
FROM (SELECT DISTINCT ON (patent_id) * FROM dup_rows ORDER BY patent_id, ord) f;
"""

# What this source says about a record, hashed: the same hash as last time means nothing to do.
_SOURCE_HASH = """encode(sha256(convert_to(
    coalesce(title, '') || chr(31) || abstract || chr(31) || coalesce(date::text, '') || chr(31)
    || coalesce(array_to_string(labels_cpc, ','), '') || chr(31)
    || coalesce(array_to_string(labels_ipc, ','), ''), 'UTF8')), 'hex')"""

# One row per patent of the file, classified once: new to the corpus, the same as this source said
# last time, or to be compared with what is stored. The lookups are per-row index probes on purpose:
# a join would be planned from statistics that lag behind bulk loads (a source whose rows were just
# added looks empty), and a nested loop over a "one row" inner side that really holds every row of
# the last batch takes hours; a probe costs the same whatever the statistics say.
_CLASSIFY = f"""
CREATE TEMP TABLE merged ON COMMIT DROP AS
SELECT r.*,
       CASE WHEN NOT EXISTS (SELECT 1 FROM patents p WHERE p.patent_id = r.patent_id) THEN 'new'
            WHEN (SELECT ps.content_hash FROM patent_sources ps
                  WHERE ps.patent_id = r.patent_id AND ps.source = %(source)s) = r.src_hash THEN 'same'
            ELSE 'check' END AS state
FROM (SELECT ord, patent_id, title, abstract, date, labels_cpc, labels_ipc, {_SOURCE_HASH} AS src_hash
      FROM stage WHERE reason IS NULL) r
"""

_LABELS_OF_MERGED = """
CROSS JOIN LATERAL (
    SELECT 'CPC' AS scheme, u.subclass, (u.ord - 1)::int AS position
        FROM unnest(m.labels_cpc) WITH ORDINALITY AS u(subclass, ord)
    UNION ALL
    SELECT 'IPC', u.subclass, (u.ord - 1)::int FROM unnest(m.labels_ipc) WITH ORDINALITY AS u(subclass, ord)
) l
"""

_INSERT_NEW = f"""
INSERT INTO patents (patent_id, title, abstract, date, source, content_hash, first_batch_id, last_batch_id)
SELECT patent_id, title, abstract, date, %(source)s,
       encode(sha256(convert_to(coalesce(title, '') || chr(31) || abstract || chr(31)
              || coalesce(date::text, ''), 'UTF8')), 'hex'),
       %(batch)s, %(batch)s
FROM merged WHERE state = 'new';

INSERT INTO patent_labels (patent_id, scheme, subclass, section, position, is_main)
SELECT m.patent_id, l.scheme, l.subclass, left(l.subclass, 1), l.position, l.position = 0
FROM merged m {_LABELS_OF_MERGED}
WHERE m.state = 'new';

INSERT INTO patent_sources (patent_id, source, content_hash, batch_id)
SELECT patent_id, %(source)s, src_hash, %(batch)s FROM merged WHERE state = 'new';
"""

_UPDATE_CHECKED = f"""
CREATE TEMP TABLE changed (patent_id text PRIMARY KEY) ON COMMIT DROP;

-- A source that changed (or a new source of a known patent) updates the text; fields it lacks
-- (a title, a date) keep what another source gave.
WITH upd AS (
    UPDATE patents p SET
        title = coalesce(m.title, p.title),
        abstract = m.abstract,
        date = coalesce(m.date, p.date),
        content_hash = encode(sha256(convert_to(coalesce(coalesce(m.title, p.title), '') || chr(31)
              || m.abstract || chr(31) || coalesce(coalesce(m.date, p.date)::text, ''), 'UTF8')), 'hex'),
        updated_at = now(), last_batch_id = %(batch)s, source = %(source)s
    FROM merged m
    WHERE m.patent_id = p.patent_id AND m.state = 'check'
      AND (p.title IS DISTINCT FROM coalesce(m.title, p.title) OR p.abstract <> m.abstract
           OR p.date IS DISTINCT FROM coalesce(m.date, p.date))
    RETURNING p.patent_id
)
INSERT INTO changed SELECT patent_id FROM upd;

-- Labels: per scheme the record carries, replace the stored set when it differs.
CREATE TEMP TABLE new_labels ON COMMIT DROP AS
SELECT m.patent_id, l.scheme, l.subclass, l.position
FROM merged m {_LABELS_OF_MERGED}
WHERE m.state = 'check';

CREATE TEMP TABLE label_diff ON COMMIT DROP AS
SELECT n.patent_id, n.scheme
FROM (SELECT patent_id, scheme, array_agg(subclass ORDER BY position) AS labels
      FROM new_labels GROUP BY patent_id, scheme) n
LEFT JOIN (SELECT pl.patent_id, pl.scheme, array_agg(pl.subclass::text ORDER BY pl.position) AS labels
           FROM patent_labels pl JOIN merged m ON m.patent_id = pl.patent_id AND m.state = 'check'
           GROUP BY pl.patent_id, pl.scheme) o
  ON o.patent_id = n.patent_id AND o.scheme = n.scheme
WHERE o.labels IS DISTINCT FROM n.labels;

DELETE FROM patent_labels pl USING label_diff d
WHERE pl.patent_id = d.patent_id AND pl.scheme = d.scheme;

INSERT INTO patent_labels (patent_id, scheme, subclass, section, position, is_main)
SELECT n.patent_id, n.scheme, n.subclass, left(n.subclass, 1), n.position, n.position = 0
FROM new_labels n JOIN label_diff d ON d.patent_id = n.patent_id AND d.scheme = n.scheme;

INSERT INTO changed SELECT DISTINCT patent_id FROM label_diff ON CONFLICT DO NOTHING;

UPDATE patents p SET updated_at = now(), last_batch_id = %(batch)s
FROM label_diff d WHERE d.patent_id = p.patent_id;

INSERT INTO patent_sources (patent_id, source, content_hash, batch_id)
SELECT patent_id, %(source)s, src_hash, %(batch)s FROM merged WHERE state = 'check'
ON CONFLICT (patent_id, source) DO UPDATE
SET content_hash = excluded.content_hash, batch_id = excluded.batch_id, seen_at = now();
"""

_TOUCH_SEEN = """
UPDATE patents p SET last_seen_at = now()
FROM merged m WHERE m.patent_id = p.patent_id AND m.state <> 'new'
"""

_STORE_REJECTS = """
INSERT INTO rejected_records (batch_id, source, position, reason, snippet, patent_id, whole)
SELECT %(batch)s, %(name)s, position, reason, snippet, patent_id, whole FROM stage
WHERE reason IS NOT NULL ORDER BY ord, whole
"""


class _Aborted(Exception):
    """Raised inside ``read()`` to abort the COPY; the original error is re-raised afterwards."""


class _CopyStream:
    """A file-like object that COPY reads: renders items as the parser yields them.

    ``read()`` returns the next block of COPY text (bytes, about ``BLOCK_BYTES``), so Postgres
    stores one block while the next is being parsed. Counts go into ``summary``; ``rejects`` counts
    the whole-record rejects written. An error raised while parsing is kept in ``error`` (psycopg2
    only reports that ``read()`` failed) and re-raised by the loader.
    """

    def __init__(self, items: Iterable[Item], summary: BatchSummary, block_bytes: int = BLOCK_BYTES) -> None:
        self._items = iter(items)
        self._summary = summary
        self._block = block_bytes
        self._done = False
        self.rejects = 0
        self.notes = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        try:
            return self._next_block()
        except BaseException as exc:  # KeyboardInterrupt too: the COPY must be aborted, not ended
            self.error = exc
            raise _Aborted(f"{type(exc).__name__}: {exc}") from None

    def _next_block(self) -> bytes:
        parts: list[bytes] = []
        got = 0
        block = self._block
        summary = self._summary
        for item in self._items:
            summary.read += 1
            ordinal = summary.read
            if isinstance(item, PatentRecord):
                line = (
                    f"{ordinal}\t{_esc(item.patent_id)}\t{_esc(item.title)}\t{_esc(item.abstract)}\t"
                    f"{item.date.isoformat() if item.date is not None else _NULL}\t"
                    f"{_array(item.labels.get('CPC'))}\t{_array(item.labels.get('IPC'))}\t"
                    f"{_esc(item.position)}\t\\N\t\\N\t\\N\n"
                )
                try:
                    data = line.encode("utf-8")
                except UnicodeEncodeError:
                    # A lone surrogate cannot be stored; the record is rejected, the batch goes on.
                    data = self._reject(
                        ordinal, item.position, _unicode_problem(item), item.abstract, item.patent_id, True
                    )
                else:
                    if item.dropped:
                        summary.labels_dropped += 1
                        data += self._reject(
                            ordinal,
                            item.position,
                            "dropped labels that are not subclass codes: "
                            + ", ".join(repr(d) for d in item.dropped)
                            + " (the record is kept with its valid labels)",
                            None,
                            item.patent_id,
                            False,
                        )
            elif isinstance(item, RejectedRecord):
                data = self._reject(ordinal, item.position, item.reason, item.snippet, item.patent_id, True)
            elif isinstance(item, SkippedRecord):
                summary.skipped += 1
                continue
            else:  # pragma: no cover - parsers only yield the three kinds
                raise TypeError(f"unexpected item {item!r}")
            parts.append(data)
            got += len(data)
            if got >= block:
                return b"".join(parts)
        self._done = True
        return b"".join(parts)

    def _reject(
        self, ordinal: int, position: str, reason: str, snippet: str | None, patent_id: str | None, whole: bool
    ) -> bytes:
        if whole:
            self.rejects += 1
        else:
            self.notes += 1
        fields = (patent_id, position, reason, _snippet(snippet))
        line = "{}\t{}\t\\N\t\\N\t\\N\t\\N\t\\N\t{}\t{}\t{}\t{}\n"
        try:
            return line.format(ordinal, *map(_esc, fields), "t" if whole else "f").encode("utf-8")
        except UnicodeEncodeError:
            clean = [None if f is None else _SURROGATES.sub("\ufffd", f) for f in fields]
            return line.format(ordinal, *map(_esc, clean), "t" if whole else "f").encode("utf-8")


def _run(cur: object, sql: str, params: dict[str, object] | tuple[object, ...] | None = None) -> int:
    cur.execute(sql, params)  # type: ignore[attr-defined]
    return cur.rowcount  # type: ignore[attr-defined]


def load_items(
    engine: "Engine",
    items: Iterator[Item],
    *,
    source: str,
    source_key: str,
    fmt: str,
    progress: bool = False,
) -> BatchSummary:
    """Store one file's parsed items as one batch, in one transaction; returns its summary."""
    import psycopg2
    from tqdm import tqdm

    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (locks.INGEST,))
        cur.execute(
            "INSERT INTO ingest_batches (source, format, status) VALUES (%s, %s, 'running') "
            "RETURNING batch_id",
            (source, fmt),
        )
        batch_id = cur.fetchone()[0]
        summary = BatchSummary(batch_id=batch_id, source=source, format=fmt)
        params = {"source": source_key, "batch": batch_id, "name": source}
        cur.execute(_STAGE_DDL)

        bar = tqdm(items, desc=Path(source).name, unit=" rec", disable=not progress, mininterval=0.5)
        stream = _CopyStream(bar, summary)
        try:
            cur.copy_expert(f"COPY stage ({_STAGE_COLUMNS}) FROM STDIN", stream, size=BLOCK_BYTES)
        except psycopg2.Error:
            if stream.error is not None:
                raise stream.error from None  # what the parser raised, not "COPY failed"
            raise
        finally:
            bar.close()

        rejected = stream.rejects
        if _run(cur, _FIND_DUPLICATES):
            cur.execute(_RESOLVE_DUPLICATES)
            cur.execute("SELECT count(*) FROM conflicts")
            rejected += cur.fetchone()[0]
        cur.execute(_CLASSIFY, params)
        cur.execute(
            "SELECT count(*) FILTER (WHERE state = 'new'), count(*) FILTER (WHERE state = 'check'), "
            "count(*) FILTER (WHERE state = 'same') FROM merged"
        )
        n_new, n_check, n_same = cur.fetchone()
        if n_new:
            cur.execute(_INSERT_NEW, params)
        if n_check:
            cur.execute(_UPDATE_CHECKED, params)
            cur.execute("SELECT count(*) FROM changed")
            summary.updated = cur.fetchone()[0]
        if n_check or n_same:
            cur.execute(_TOUCH_SEEN)
        if rejected or stream.notes:
            cur.execute(_STORE_REJECTS, params)

        summary.stored = n_new
        summary.rejected = rejected
        summary.unchanged = summary.read - summary.stored - summary.updated - summary.rejected - summary.skipped
        summary.seconds = time.perf_counter() - started
        cur.execute(
            """
            UPDATE ingest_batches SET status = 'succeeded', finished_at = now(), n_read = %s,
                n_stored = %s, n_updated = %s, n_unchanged = %s, n_rejected = %s, n_skipped = %s,
                n_labels_dropped = %s, seconds = %s
            WHERE batch_id = %s
            """,
            (
                summary.read,
                summary.stored,
                summary.updated,
                summary.unchanged,
                summary.rejected,
                summary.skipped,
                summary.labels_dropped,
                summary.seconds,
                batch_id,
            ),
        )
        raw.commit()
        return summary
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()
