"""Dataset snapshots: `full` and `subset` (paper: USPTO-2M and USPTO-0.3M), 80/20 by a stable id hash.

Membership is decided in SQL from a hash of the patent id, so a patent never changes side when the
corpus grows and nightly scores stay comparable. A snapshot freezes who is in which split with the
labels they had; rebuilding on an unchanged corpus returns the existing snapshot.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from patentml.db import locks
from patentml.exceptions import DataError
from patentml.settings import Settings
from patentml.variants import DATASETS

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

TEST_FRACTION = 0.2
#: Validation slice, as a fraction of the whole corpus (carved out of the 80 % train side).
VALID_FRACTION = 0.1
SUBSET_FRACTION = 0.15
SUBSET_CAP = 300_000
SPLITS = ("train", "valid", "test")

# A uniform number in [0, 1) from the first 32 bits of md5(salt || id): stable across machines.
_HASH_SQL = "(('x' || substr(md5({salt} || patent_id), 1, 8))::bit(32)::bigint)::float8 / 4294967296.0"


def id_hash(patent_id: str, salt: str = "") -> float:
    """Python twin of the SQL hash (tests and tools)."""
    return int(hashlib.md5((salt + patent_id).encode()).hexdigest()[:8], 16) / 2**32


def split_of(patent_id: str) -> str:
    """Which side a patent falls on, independent of everything else in the corpus."""
    h = id_hash(patent_id)
    if h < TEST_FRACTION:
        return "test"
    if h < TEST_FRACTION + VALID_FRACTION:
        return "valid"
    return "train"


_LABELS_SQL = {
    "CPC": """
        SELECT patent_id, 'CPC' AS label_scheme, array_agg(subclass ORDER BY position) AS labels
        FROM patent_labels WHERE scheme = 'CPC' GROUP BY patent_id
    """,
    "IPC": """
        SELECT patent_id, 'IPC' AS label_scheme, array_agg(subclass ORDER BY position) AS labels
        FROM patent_labels WHERE scheme = 'IPC' GROUP BY patent_id
    """,
    # CPC where a patent has it, IPC otherwise (subclass codes are shared by both schemes).
    "CPC+IPC": """
        SELECT DISTINCT ON (patent_id) patent_id, scheme AS label_scheme,
               array_agg(subclass ORDER BY position) AS labels
        FROM patent_labels GROUP BY patent_id, scheme
        ORDER BY patent_id, scheme = 'CPC' DESC
    """,
}


@dataclass
class SnapshotInfo:
    snapshot_id: int
    changed: bool
    label_scheme: str
    stats: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "changed": self.changed,
            "label_scheme": self.label_scheme,
            "stats": self.stats,
        }


def rebuild_splits(engine: "Engine", settings: Settings) -> dict[str, Any]:
    """Build a snapshot of the current corpus (or return the latest one if nothing changed)."""
    return rebuild(engine, settings.label_scheme).as_dict()


def rebuild(engine: "Engine", label_scheme: str = "CPC") -> SnapshotInfo:
    if label_scheme not in _LABELS_SQL:
        raise DataError(f"unknown label scheme {label_scheme!r}; use CPC, IPC or CPC+IPC")
    params = {
        "test_fraction": TEST_FRACTION,
        "valid_fraction": VALID_FRACTION,
        "subset_fraction": SUBSET_FRACTION,
        "subset_cap": SUBSET_CAP,
    }
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        # One snapshot build at a time; concurrent callers get the finished one.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (locks.SPLITS,))
        cur.execute(
            f"""
            CREATE TEMP TABLE cand ON COMMIT DROP AS
            SELECT l.patent_id, l.label_scheme, l.labels,
                   {_HASH_SQL.format(salt="''")} AS h,
                   {_HASH_SQL.format(salt="'subset:'")} AS hs
            FROM ({_LABELS_SQL[label_scheme]}) l
            JOIN patents p USING (patent_id)
            WHERE length(btrim(p.abstract)) > 0;
            ALTER TABLE cand ADD COLUMN split text, ADD COLUMN in_subset boolean;
            UPDATE cand SET split = CASE WHEN h < %(t)s THEN 'test'
                                         WHEN h < %(t)s + %(v)s THEN 'valid' ELSE 'train' END;
            UPDATE cand c SET in_subset = r.rn <= %(cap)s
            FROM (SELECT patent_id, row_number() OVER (ORDER BY hs, patent_id) AS rn
                  FROM cand WHERE hs < %(sf)s) r
            WHERE r.patent_id = c.patent_id;
            UPDATE cand SET in_subset = false WHERE in_subset IS NULL;
            """,
            {"t": TEST_FRACTION, "v": VALID_FRACTION, "cap": SUBSET_CAP, "sf": SUBSET_FRACTION},
        )
        cur.execute(
            "SELECT count(*), md5(coalesce(string_agg(patent_id || ':' || split || ':' || in_subset::text "
            "|| ':' || array_to_string(labels, ','), ';' ORDER BY patent_id), '')) FROM cand"
        )
        n_total, fingerprint = cur.fetchone()
        if n_total == 0:
            raise DataError(
                f"No patent has {label_scheme} labels: ingest data first (patentml ingest SOURCE), "
                "or choose another PATENTML_LABEL_SCHEME"
            )
        cur.execute(
            "SELECT snapshot_id FROM dataset_snapshots WHERE label_scheme = %s AND fingerprint = %s "
            "AND params = %s::jsonb ORDER BY snapshot_id DESC LIMIT 1",
            (label_scheme, fingerprint, _json(params)),
        )
        row = cur.fetchone()
        if row is not None:
            raw.rollback()
            snapshot_id = row[0]
            log.info("Corpus unchanged: reusing snapshot %s", snapshot_id)
            return SnapshotInfo(snapshot_id, False, label_scheme, snapshot_stats(engine, snapshot_id))
        cur.execute(
            "INSERT INTO dataset_snapshots (label_scheme, fingerprint, params) VALUES (%s, %s, %s::jsonb) "
            "RETURNING snapshot_id",
            (label_scheme, fingerprint, _json(params)),
        )
        snapshot_id = cur.fetchone()[0]
        cur.execute(
            """
            INSERT INTO snapshot_members (snapshot_id, patent_id, split, in_subset, label_scheme, labels)
            SELECT %(s)s, patent_id, split, in_subset, label_scheme, labels FROM cand;
            """,
            {"s": snapshot_id},
        )
        for dataset, cond in (("full", "true"), ("subset", "in_subset")):
            cur.execute(
                f"""
                INSERT INTO snapshot_labels (snapshot_id, dataset, label_index, subclass, n_train)
                SELECT %(s)s, %(d)s, (row_number() OVER (ORDER BY subclass)) - 1, subclass, n
                FROM (SELECT unnest(labels) AS subclass, count(*) AS n FROM cand
                      WHERE split = 'train' AND {cond} GROUP BY 1) t;

                INSERT INTO snapshot_stats (snapshot_id, dataset, split, n_patents, n_labels,
                                            labels_per_patent, n_unseen_labels, n_unseen_assignments)
                SELECT %(s)s, %(d)s, c.split, count(DISTINCT c.patent_id), count(DISTINCT u.subclass),
                       count(u.subclass)::float8 / greatest(count(DISTINCT c.patent_id), 1),
                       count(DISTINCT u.subclass) FILTER (WHERE sl.subclass IS NULL),
                       count(u.subclass) FILTER (WHERE sl.subclass IS NULL)
                FROM cand c CROSS JOIN LATERAL unnest(c.labels) AS u(subclass)
                LEFT JOIN snapshot_labels sl
                       ON sl.snapshot_id = %(s)s AND sl.dataset = %(d)s AND sl.subclass = u.subclass
                WHERE {cond}
                GROUP BY c.split;
                """,
                {"s": snapshot_id, "d": dataset},
            )
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()
    stats = snapshot_stats(engine, snapshot_id)
    log.info("Built snapshot %s (%s labels, %s patents)", snapshot_id, label_scheme, n_total)
    return SnapshotInfo(snapshot_id, True, label_scheme, stats)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def latest_snapshot(engine: "Engine", label_scheme: str | None = None) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        sid = conn.execute(
            text(
                "SELECT max(snapshot_id) FROM dataset_snapshots "
                "WHERE (CAST(:s AS text) IS NULL OR label_scheme = :s)"
            ),
            {"s": label_scheme},
        ).scalar()
    if sid is None:
        raise DataError("No dataset snapshot yet: run 'patentml splits rebuild' first")
    return int(sid)


def snapshot_stats(engine: "Engine", snapshot_id: int) -> list[dict[str, Any]]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT dataset, split, n_patents, n_labels, labels_per_patent, n_unseen_labels, "
                "n_unseen_assignments FROM snapshot_stats WHERE snapshot_id = :s "
                "ORDER BY dataset, array_position(ARRAY['train','valid','test'], split::text)"
            ),
            {"s": snapshot_id},
        ).mappings()
        return [dict(r) for r in rows]


def label_space(engine: "Engine", snapshot_id: int, dataset: str) -> list[str]:
    """The subclasses of a dataset's train split, in output-index order."""
    from sqlalchemy import text

    with engine.connect() as conn:
        labels = list(
            conn.execute(
                text(
                    "SELECT subclass FROM snapshot_labels WHERE snapshot_id = :s AND dataset = :d "
                    "ORDER BY label_index"
                ),
                {"s": snapshot_id, "d": dataset},
            ).scalars()
        )
    if not labels:
        raise DataError(f"Snapshot {snapshot_id} has no labels for dataset {dataset!r}")
    return labels


def iter_split(
    engine: "Engine", snapshot_id: int, dataset: str, split: str, *, fetch: int = 2000
) -> Iterator[tuple[str, str, list[str]]]:
    """Stream ``(patent_id, abstract, labels)`` of one split from Postgres (server-side cursor)."""
    if dataset not in DATASETS or split not in SPLITS:
        raise DataError(f"unknown dataset/split {dataset}/{split}")
    raw = engine.raw_connection()
    try:
        cur = raw.cursor(name=f"split_{snapshot_id}_{dataset}_{split}")
        cur.itersize = fetch
        cur.execute(
            "SELECT m.patent_id, p.abstract, m.labels FROM snapshot_members m "
            "JOIN patents p USING (patent_id) "
            "WHERE m.snapshot_id = %s AND m.split = %s AND (%s OR m.in_subset) ORDER BY m.patent_id",
            (snapshot_id, split, dataset == "full"),
        )
        for patent_id, abstract, labels in cur:
            yield patent_id, abstract, list(labels)
        cur.close()
        raw.commit()
    finally:
        raw.close()


def split_size(engine: "Engine", snapshot_id: int, dataset: str, split: str) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(
            text("SELECT count(*) FROM snapshot_members WHERE snapshot_id = :s AND split = :p AND (:full OR in_subset)"),
            {"s": snapshot_id, "p": split, "full": dataset == "full"}).scalar())


class SplitCorpus:
    """A split streamed from Postgres each time it is iterated (server-side cursor); a training corpus."""

    def __init__(self, engine: "Engine", snapshot_id: int, dataset: str, split: str) -> None:
        self.engine, self.snapshot_id, self.dataset, self.split = engine, snapshot_id, dataset, split
        self._len: int | None = None

    def __iter__(self) -> Iterator[tuple[str, str, list[str]]]:
        return iter_split(self.engine, self.snapshot_id, self.dataset, self.split)

    def __len__(self) -> int:
        if self._len is None:
            self._len = split_size(self.engine, self.snapshot_id, self.dataset, self.split)
        return self._len


def format_stats(stats: list[dict[str, Any]]) -> str:
    lines = ["| dataset | split | patents | labels | labels/patent | unseen labels | unseen assignments |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s in stats:
        lines.append(
            f"| {s['dataset']} | {s['split']} | {s['n_patents']:,} | {s['n_labels']} | "
            f"{s['labels_per_patent']:.2f} | {s['n_unseen_labels']} | {s['n_unseen_assignments']} |"
        )
    return "\n".join(lines)
