"""The careful path of a batch: records that may already be stored, settled in SQL against what is.

A record goes to the ``stage`` table instead of straight into the corpus when its patent is
already stored (from an earlier batch, or earlier in this file). Rejected input waits there too.
After the file is read, duplicates inside the file are resolved, every staged record is classified
once (``new``, ``same`` as what this source said last time, or ``check``) and each table is written
in one statement per kind of change; statements with nothing to do are not sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from patentml.ingest.copytext import SOURCE_HASH_SQL, TEXT_HASH_SQL

STAGE_DDL = """
CREATE TEMP TABLE stage (
    ord integer, patent_id text, title text, abstract text, date date,
    labels_cpc text[], labels_ipc text[], position text,
    reason text, snippet text, whole boolean
) ON COMMIT DROP
"""
# Rows of stage with a reason are rejected input (whole = false: a note about a stored record);
# the others are records.

# A staged record of a patent this batch stored new is a later record of the same patent in this
# file: its first record comes back from the corpus as the first row of its id (ord below every
# real one), so duplicates are resolved against it as if both had been staged.
_FIRSTS_OF_THIS_BATCH = """
INSERT INTO stage (ord, patent_id, title, abstract, date, labels_cpc, labels_ipc, position)
SELECT -row_number() OVER (ORDER BY p.patent_id), p.patent_id, p.title, p.abstract, p.date,
       (SELECT array_agg(l.subclass::text ORDER BY l.position) FROM patent_labels l
        WHERE l.patent_id = p.patent_id AND l.scheme = 'CPC'),
       (SELECT array_agg(l.subclass::text ORDER BY l.position) FROM patent_labels l
        WHERE l.patent_id = p.patent_id AND l.scheme = 'IPC'),
       ps.position
FROM (SELECT DISTINCT patent_id FROM stage WHERE reason IS NULL) s
JOIN patents p ON p.patent_id = s.patent_id AND p.first_batch_id = %(batch)s
JOIN patent_sources ps ON ps.patent_id = p.patent_id AND ps.source = %(source)s
"""

_FIND_DUPLICATES = """
CREATE TEMP TABLE dups ON COMMIT DROP AS
SELECT patent_id FROM stage WHERE reason IS NULL GROUP BY patent_id HAVING count(*) > 1
"""

# Within one file a patent may appear more than once. Rows that disagree with the first row about
# a scheme's labels are rejected; rows under another scheme are merged (CPC in one record and IPC
# in another keep both sets); text comes from the first row, and a later row with other text is
# noted. Only the rows of repeated ids are touched: they leave stage, and come back as one merged
# row per id plus the rejects and notes.
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

INSERT INTO stage (ord, patent_id, position, reason, snippet, whole)
SELECT s.ord, s.patent_id, s.position,
       'duplicate patent id ' || s.patent_id || ' in this file with a different '
       || concat_ws(', ', CASE WHEN s.title <> f.title THEN 'title' END,
                    CASE WHEN s.abstract <> f.abstract THEN 'abstract' END,
                    CASE WHEN s.date <> f.date THEN 'date' END)
       || ' than at ' || f.position || ' (the first record''s text is kept)', NULL, false
FROM dup_rows s
JOIN (SELECT DISTINCT ON (patent_id) * FROM dup_rows ORDER BY patent_id, ord) f
  ON f.patent_id = s.patent_id AND s.ord > f.ord
WHERE s.title <> f.title OR s.abstract <> f.abstract OR s.date <> f.date;

INSERT INTO stage (ord, patent_id, title, abstract, date, labels_cpc, labels_ipc, position)
SELECT f.ord, f.patent_id, f.title, f.abstract, f.date,
       (SELECT x.labels_cpc FROM dup_rows x WHERE x.patent_id = f.patent_id AND x.labels_cpc IS NOT NULL
        ORDER BY x.ord LIMIT 1),
       (SELECT x.labels_ipc FROM dup_rows x WHERE x.patent_id = f.patent_id AND x.labels_ipc IS NOT NULL
        ORDER BY x.ord LIMIT 1),
       f.position
FROM (SELECT DISTINCT ON (patent_id) * FROM dup_rows ORDER BY patent_id, ord) f;
"""

# One row per staged patent, classified once: new to the corpus, the same as this source said
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
FROM (SELECT ord, patent_id, title, abstract, date, labels_cpc, labels_ipc, position,
             {SOURCE_HASH_SQL.format(p="")} AS src_hash
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
       {TEXT_HASH_SQL.format(title="title", abstract="abstract", date="date")}, %(batch)s, %(batch)s
FROM merged WHERE state = 'new';

INSERT INTO patent_labels (patent_id, scheme, subclass, section, position, is_main)
SELECT m.patent_id, l.scheme, l.subclass, left(l.subclass, 1), l.position, l.position = 0
FROM merged m {_LABELS_OF_MERGED}
WHERE m.state = 'new';

INSERT INTO patent_sources (patent_id, source, content_hash, batch_id, position)
SELECT patent_id, %(source)s, src_hash, %(batch)s, position FROM merged WHERE state = 'new';
"""

_NEW_TEXT_HASH = TEXT_HASH_SQL.format(
    title="coalesce(m.title, p.title)", abstract="m.abstract", date="coalesce(m.date, p.date)"
)

_UPDATE_CHECKED = f"""
CREATE TEMP TABLE changed (patent_id text PRIMARY KEY) ON COMMIT DROP;

-- A source that changed (or a new source of a known patent) updates the text; fields it lacks
-- (a title, a date) keep what another source gave.
WITH upd AS (
    UPDATE patents p SET
        title = coalesce(m.title, p.title),
        abstract = m.abstract,
        date = coalesce(m.date, p.date),
        content_hash = {_NEW_TEXT_HASH},
        updated_at = now(), last_batch_id = %(batch)s, source = %(source)s
    FROM merged m
    WHERE m.patent_id = p.patent_id AND m.state = 'check'
      AND (p.title IS DISTINCT FROM coalesce(m.title, p.title) OR p.abstract <> m.abstract
           OR p.date IS DISTINCT FROM coalesce(m.date, p.date))
    RETURNING p.patent_id
)
INSERT INTO changed SELECT patent_id FROM upd;

-- Labels: per scheme the record carries, replace the stored set when it differs. A record without
-- labels carries no scheme: the labels a patent has (or gets later) are never taken away by it.
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

INSERT INTO patent_sources (patent_id, source, content_hash, batch_id, position)
SELECT patent_id, %(source)s, src_hash, %(batch)s, position FROM merged WHERE state = 'check'
ON CONFLICT (patent_id, source) DO UPDATE
SET content_hash = excluded.content_hash, batch_id = excluded.batch_id, position = excluded.position,
    seen_at = now();
"""

# Patents this batch stored new are not "updated" when a later record of the file adds to them.
_COUNT_UPDATED = """
SELECT count(*) FROM changed c JOIN patents p USING (patent_id) WHERE p.first_batch_id <> %(batch)s
"""

_TOUCH_SEEN = """
UPDATE patents p SET last_seen_at = now()
FROM merged m WHERE m.patent_id = p.patent_id AND m.state <> 'new'
"""

_STORE_REJECTS = """
INSERT INTO rejected_records (batch_id, source, position, reason, snippet, patent_id, whole)
SELECT %(batch)s, %(name)s, position, reason, snippet, patent_id, whole FROM stage
WHERE reason IS NOT NULL ORDER BY ord, whole LIMIT %(room)s
"""

_STORE_SUMMARY = """
INSERT INTO rejected_records (batch_id, source, position, reason, whole)
VALUES (%(batch)s, %(name)s, %(position)s, %(reason)s, true)
"""


@dataclass
class Settled:
    """What the careful path stored: new patents, changed ones, records rejected as conflicting duplicates."""

    stored: int = 0
    updated: int = 0
    conflicts: int = 0


def _one(cur: Any, sql: str, params: dict[str, object]) -> Any:
    cur.execute(sql, params)
    return cur.fetchone()[0]


def settle(cur: Any, params: dict[str, object]) -> Settled:
    """Resolve, classify and write the staged records (``params``: ``source``, ``batch``)."""
    out = Settled()
    cur.execute(_FIRSTS_OF_THIS_BATCH, params)
    cur.execute(_FIND_DUPLICATES)
    if cur.rowcount:
        cur.execute(_RESOLVE_DUPLICATES)
        out.conflicts = _one(cur, "SELECT count(*) FROM conflicts", params)
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
        out.updated = _one(cur, _COUNT_UPDATED, params)
    if n_check or n_same:
        cur.execute(_TOUCH_SEEN)
    out.stored = n_new
    return out


def store_rejects(cur: Any, params: dict[str, object], room: int, overflow: int, first_overflow: str | None) -> None:
    """Rejected input and notes into ``rejected_records``: at most ``room`` rows, then one summary row.

    ``overflow`` rows were never staged (the producer's cap); rows staged beyond ``room`` (conflicts
    found in SQL) are counted in the summary too.
    """
    staged = _one(cur, "SELECT count(*) FROM stage WHERE reason IS NOT NULL", params)
    if staged:
        cur.execute(_STORE_REJECTS, {**params, "room": room})
        overflow += staged - cur.rowcount
    if overflow:
        reason = (
            f"{overflow:,} more rejected records and notes of this batch were not stored one by one: a batch "
            f"keeps the first {room:,}; n_rejected and n_labels_dropped still count every one"
        )
        cur.execute(_STORE_SUMMARY, {**params, "position": first_overflow or "(after the stored ones)", "reason": reason})
