"""Load parsed records into Postgres: COPY into a staging table, then one set-based upsert per file.

Each source file is one batch and one transaction: a batch killed half-way leaves nothing behind,
and running it again completes it. Batches are serialised by an advisory lock, so two ingests of
overlapping files never race on the same patent.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from patentml.ingest.records import Item, PatentRecord, RejectedRecord, SkippedRecord

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

INGEST_LOCK = 7_243_902
CHUNK_ROWS = 5000
SNIPPET_CHARS = 300


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


_STAGE_DDL = """
CREATE TEMP TABLE stage (
    ord integer, patent_id text, title text, abstract text, date date,
    labels_cpc text[], labels_ipc text[], position text
) ON COMMIT DROP;
CREATE TEMP TABLE stage_rej (
    position text, reason text, snippet text, patent_id text, whole boolean
) ON COMMIT DROP;
"""

# Within one file a patent may appear more than once. Rows that disagree with the first row about
# a scheme's labels are rejected; rows under another scheme are merged (CPC in one record and IPC
# in another keep both sets); text comes from the first row.
_DEDUPE_SQL = """
CREATE INDEX ON stage (patent_id, ord);
ANALYZE stage;
WITH firsts AS (
    SELECT DISTINCT ON (patent_id, scheme) patent_id, scheme, ord, labels, position
    FROM (
        SELECT patent_id, 'CPC' AS scheme, ord, labels_cpc AS labels, position FROM stage
            WHERE labels_cpc IS NOT NULL
        UNION ALL
        SELECT patent_id, 'IPC', ord, labels_ipc, position FROM stage WHERE labels_ipc IS NOT NULL
    ) s
    ORDER BY patent_id, scheme, ord
), conflicts AS (
    SELECT s.ord, s.patent_id, s.position,
           string_agg(f.scheme || ' labels ' || array_to_string(
               CASE f.scheme WHEN 'CPC' THEN s.labels_cpc ELSE s.labels_ipc END, ' ')
               || ' differ from ' || array_to_string(f.labels, ' ') || ' at ' || f.position, '; ') AS why
    FROM stage s JOIN firsts f ON f.patent_id = s.patent_id AND s.ord > f.ord
    WHERE (f.scheme = 'CPC' AND s.labels_cpc IS NOT NULL AND s.labels_cpc <> f.labels)
       OR (f.scheme = 'IPC' AND s.labels_ipc IS NOT NULL AND s.labels_ipc <> f.labels)
    GROUP BY s.ord, s.patent_id, s.position
), moved AS (
    DELETE FROM stage s USING conflicts c WHERE s.ord = c.ord
    RETURNING s.ord
)
INSERT INTO stage_rej (position, reason, snippet, patent_id, whole)
SELECT c.position, 'duplicate patent id ' || c.patent_id || ' in this file with different labels: '
       || c.why || ' (the first record is kept)', NULL, c.patent_id, true
FROM conflicts c JOIN moved m ON m.ord = c.ord;

CREATE TEMP TABLE merged ON COMMIT DROP AS
SELECT DISTINCT ON (s.patent_id)
       s.patent_id, s.title, s.abstract, s.date,
       (SELECT labels_cpc FROM stage x WHERE x.patent_id = s.patent_id AND x.labels_cpc IS NOT NULL
        ORDER BY x.ord LIMIT 1) AS labels_cpc,
       (SELECT labels_ipc FROM stage x WHERE x.patent_id = s.patent_id AND x.labels_ipc IS NOT NULL
        ORDER BY x.ord LIMIT 1) AS labels_ipc,
       NULL::text AS src_hash, NULL::text AS state
FROM stage s ORDER BY s.patent_id, s.ord;
ALTER TABLE merged ADD PRIMARY KEY (patent_id);
ANALYZE merged;
UPDATE merged SET src_hash = encode(sha256(convert_to(
    coalesce(title, '') || chr(31) || abstract || chr(31) || coalesce(date::text, '') || chr(31)
    || coalesce(array_to_string(labels_cpc, ','), '') || chr(31)
    || coalesce(array_to_string(labels_ipc, ','), ''), 'UTF8')), 'hex');
"""

_UPSERT_SQL = """
UPDATE merged m SET state = CASE
    WHEN p.patent_id IS NULL THEN 'new'
    WHEN ps.content_hash = m.src_hash THEN 'same'
    ELSE 'check' END
FROM merged m2
LEFT JOIN patents p ON p.patent_id = m2.patent_id
LEFT JOIN patent_sources ps ON ps.patent_id = m2.patent_id AND ps.source = %(source)s
WHERE m.patent_id = m2.patent_id;

CREATE TEMP TABLE changed (patent_id text PRIMARY KEY) ON COMMIT DROP;

INSERT INTO patents (patent_id, title, abstract, date, source, content_hash,
                     first_batch_id, last_batch_id)
SELECT patent_id, title, abstract, date, %(source)s,
       encode(sha256(convert_to(coalesce(title, '') || chr(31) || abstract || chr(31)
              || coalesce(date::text, ''), 'UTF8')), 'hex'),
       %(batch)s, %(batch)s
FROM merged WHERE state = 'new';

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
SELECT m.patent_id, l.scheme, l.subclass, l.position, m.state
FROM merged m
CROSS JOIN LATERAL (
    SELECT 'CPC' AS scheme, u.subclass, (u.ord - 1)::int AS position
        FROM unnest(m.labels_cpc) WITH ORDINALITY AS u(subclass, ord)
    UNION ALL
    SELECT 'IPC', u.subclass, (u.ord - 1)::int FROM unnest(m.labels_ipc) WITH ORDINALITY AS u(subclass, ord)
) l
WHERE m.state IN ('new', 'check');

CREATE TEMP TABLE label_diff ON COMMIT DROP AS
SELECT n.patent_id, n.scheme
FROM (SELECT patent_id, scheme, array_agg(subclass ORDER BY position) AS labels
      FROM new_labels WHERE state = 'check' GROUP BY patent_id, scheme) n
LEFT JOIN (SELECT pl.patent_id, pl.scheme, array_agg(pl.subclass::text ORDER BY pl.position) AS labels
           FROM patent_labels pl JOIN merged m ON m.patent_id = pl.patent_id AND m.state = 'check'
           GROUP BY pl.patent_id, pl.scheme) o
  ON o.patent_id = n.patent_id AND o.scheme = n.scheme
WHERE o.labels IS DISTINCT FROM n.labels;

DELETE FROM patent_labels pl USING label_diff d
WHERE pl.patent_id = d.patent_id AND pl.scheme = d.scheme;

INSERT INTO patent_labels (patent_id, scheme, subclass, section, position, is_main)
SELECT n.patent_id, n.scheme, n.subclass, left(n.subclass, 1), n.position, n.position = 0
FROM new_labels n
WHERE n.state = 'new'
   OR EXISTS (SELECT 1 FROM label_diff d WHERE d.patent_id = n.patent_id AND d.scheme = n.scheme);

INSERT INTO changed SELECT DISTINCT patent_id FROM label_diff ON CONFLICT DO NOTHING;

UPDATE patents p SET updated_at = now(), last_batch_id = %(batch)s
FROM label_diff d WHERE d.patent_id = p.patent_id;

INSERT INTO patent_sources (patent_id, source, content_hash, batch_id)
SELECT patent_id, %(source)s, src_hash, %(batch)s FROM merged WHERE state IN ('new', 'check')
ON CONFLICT (patent_id, source) DO UPDATE
SET content_hash = excluded.content_hash, batch_id = excluded.batch_id, seen_at = now();

UPDATE patents p SET last_seen_at = now()
FROM merged m WHERE m.patent_id = p.patent_id AND m.state <> 'new';
"""


class _CopyBuffer:
    """Rows rendered in COPY text format, flushed to Postgres every ``CHUNK_ROWS`` rows."""

    def __init__(self, cursor: object, table: str, columns: str) -> None:
        self.cursor = cursor
        self.sql = f"COPY {table} ({columns}) FROM STDIN"
        self.buf = io.StringIO()
        self.rows = 0

    def add(self, fields: Iterable[object]) -> None:
        self.buf.write("\t".join(_esc(f) for f in fields))
        self.buf.write("\n")
        self.rows += 1
        if self.rows % CHUNK_ROWS == 0:
            self.flush()

    def add_raw(self, line: str) -> None:
        self.buf.write(line)
        self.rows += 1
        if self.rows % CHUNK_ROWS == 0:
            self.flush()

    def flush(self) -> None:
        if self.buf.tell():
            self.buf.seek(0)
            self.cursor.copy_expert(self.sql, self.buf)  # type: ignore[attr-defined]
            self.buf = io.StringIO()


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
    from tqdm import tqdm

    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (INGEST_LOCK,))
        cur.execute(
            "INSERT INTO ingest_batches (source, format, status) VALUES (%s, %s, 'running') "
            "RETURNING batch_id",
            (source, fmt),
        )
        batch_id = cur.fetchone()[0]
        summary = BatchSummary(batch_id=batch_id, source=source, format=fmt)
        cur.execute(_STAGE_DDL)
        stage = _CopyBuffer(cur, "stage", "ord, patent_id, title, abstract, date, labels_cpc, labels_ipc, position")
        rej = _CopyBuffer(cur, "stage_rej", "position, reason, snippet, patent_id, whole")
        bar = tqdm(items, desc=Path(source).name, unit=" rec", disable=not progress, mininterval=0.5)
        for item in bar:
            summary.read += 1
            if isinstance(item, PatentRecord):
                stage.add_raw(
                    f"{summary.read}\t{_esc(item.patent_id)}\t{_esc(item.title)}\t{_esc(item.abstract)}\t"
                    f"{_esc(item.date)}\t{_array(item.labels.get('CPC'))}\t{_array(item.labels.get('IPC'))}\t"
                    f"{_esc(item.position)}\n"
                )
                if item.dropped:
                    summary.labels_dropped += 1
                    rej.add(
                        (
                            item.position,
                            "dropped labels that are not subclass codes: "
                            + ", ".join(repr(d) for d in item.dropped)
                            + " (the record is kept with its valid labels)",
                            None,
                            item.patent_id,
                            False,
                        )
                    )
            elif isinstance(item, RejectedRecord):
                rej.add((item.position, item.reason, _snippet(item.snippet), item.patent_id, True))
            elif isinstance(item, SkippedRecord):
                summary.skipped += 1
            else:  # pragma: no cover - parsers only yield the three kinds
                raise TypeError(f"unexpected item {item!r}")
        bar.close()
        stage.flush()
        rej.flush()
        cur.execute(_DEDUPE_SQL)
        cur.execute(_UPSERT_SQL, {"source": source_key, "batch": batch_id})
        cur.execute(
            """
            INSERT INTO rejected_records (batch_id, source, position, reason, snippet, patent_id, whole)
            SELECT %s, %s, position, reason, snippet, patent_id, whole FROM stage_rej
            """,
            (batch_id, source),
        )
        cur.execute(
            """
            SELECT (SELECT count(*) FROM merged WHERE state = 'new'),
                   (SELECT count(*) FROM changed c JOIN merged m USING (patent_id) WHERE m.state = 'check'),
                   (SELECT count(*) FROM stage_rej WHERE whole)
            """
        )
        summary.stored, summary.updated, summary.rejected = cur.fetchone()
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
