"""Helpers of the ingest tests on a real Postgres: queries, expected rows, input files, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from patentml.db import locks
from patentml.ingest import BatchSummary
from tests.conftest import REPO

FIXTURES = Path(__file__).parent / "fixtures"
FORMATS = FIXTURES / "ingest"  # the parser fixtures, in the real layouts
BAD = FIXTURES / "ingest_db" / "bad.jsonl"

CORPUS_TABLES = ("patent_labels", "patent_sources", "rejected_records", "patents", "ingest_batches")


@pytest.fixture(autouse=True)
def clean(engine) -> Iterator[None]:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(CORPUS_TABLES)} RESTART IDENTITY CASCADE"))
    yield


def query(engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql), params)]


def scalar(engine, sql: str, **params: Any) -> Any:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def rejected(engine, batch_id: int) -> list[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    """(position, reason, patent_id, whole) of a batch's rejected rows, in file order."""
    return query(
        engine,
        "SELECT position, reason, patent_id, whole FROM rejected_records WHERE batch_id = :b ORDER BY id",
        b=batch_id,
    )


def batch_row(engine, batch_id: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM ingest_batches WHERE batch_id = :b"), {"b": batch_id}).mappings().one()
    return dict(row)


COUNTS = ("read", "stored", "updated", "unchanged", "rejected", "skipped", "labels_dropped", "unlabelled")


def counts(summary: BatchSummary) -> dict[str, int]:
    return {key: getattr(summary, key) for key in COUNTS}


def assert_batch_matches(engine, summary: BatchSummary, status: str = "succeeded", **expected: int) -> None:  # type: ignore[no-untyped-def]
    """The summary has ``expected`` counts (others 0) and ``status``, and the ingest_batches row says the same."""
    want = {key: expected.get(key, 0) for key in COUNTS}
    assert counts(summary) == want
    assert summary.read == summary.stored + summary.updated + summary.unchanged + summary.rejected + summary.skipped
    row = batch_row(engine, summary.batch_id)
    assert {key: row[f"n_{key}"] for key in COUNTS} == want
    assert row["status"] == summary.status == status and row["finished_at"] is not None
    assert row["message"] == summary.message
    assert row["source"] == summary.source and row["format"] == summary.format
    assert scalar(
        engine, "SELECT count(*) FROM rejected_records WHERE batch_id = :b AND whole", b=summary.batch_id
    ) == summary.rejected


def labels(engine, patent_id: str) -> list[tuple[str, str, str, int, bool]]:  # type: ignore[no-untyped-def]
    """(scheme, subclass, section, position, is_main) of a patent, schemes then positions in order."""
    return query(
        engine,
        "SELECT scheme, subclass, section, position, is_main FROM patent_labels WHERE patent_id = :p "
        "ORDER BY scheme, position",
        p=patent_id,
    )


def cpc(*codes: str) -> list[tuple[str, str, str, int, bool]]:
    return [("CPC", c, c[0], i, i == 0) for i, c in enumerate(codes)]


def ipc(*codes: str) -> list[tuple[str, str, str, int, bool]]:
    return [("IPC", c, c[0], i, i == 0) for i, c in enumerate(codes)]


def patent(engine, patent_id: str) -> tuple[Any, ...] | None:  # type: ignore[no-untyped-def]
    rows = query(engine, "SELECT title, abstract, date, source FROM patents WHERE patent_id = :p", p=patent_id)
    return rows[0] if rows else None


def corpus(engine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:  # type: ignore[no-untyped-def]
    """Everything stored about patents except ``last_seen_at`` (which a re-read moves on purpose)."""
    return (
        query(
            engine,
            "SELECT patent_id, title, abstract, date, source, content_hash, first_seen_at, updated_at, "
            "first_batch_id, last_batch_id FROM patents ORDER BY patent_id",
        ),
        query(engine, "SELECT * FROM patent_labels ORDER BY patent_id, scheme, position"),
        query(engine, "SELECT patent_id, source, content_hash, batch_id, seen_at FROM patent_sources ORDER BY 1, 2"),
    )


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rec(pid: str, labels: list[str], scheme: str = "CPC", **extra: Any) -> dict[str, Any]:
    return {"id": pid, "title": extra.pop("title", f"Title of {pid}"),
            "abstract": extra.pop("abstract", f"Abstract of {pid}."), "labels": labels, "label_scheme": scheme, **extra}



@pytest.fixture(scope="module")
def cli_env(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of a ``patentml`` subprocess on this module's database."""
    return {
        **os.environ,
        "PATENTML_DATABASE_URL": db_url,
        "PATENTML_HOME": str(tmp_path_factory.mktemp("cli-home")),
        "PATENTML_LOG_LEVEL": "WARNING",
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "patentml.cli", *args], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=120,
    )


def popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "patentml.cli", *args], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def synthetic(path: Path, ids: range, text_chars: int = 300) -> Path:
    """JSONL with one record per id; labels and text depend only on the id, so files can overlap."""
    subclasses = ("A01B", "B65D", "G06F", "H04L", "H04W", "F16B", "C07D", "A61K")
    with open(path, "w") as out:
        for i in ids:
            words = f"record {i} " + " ".join(str(i * k % 9973) for k in range(1, text_chars // 4))
            out.write(json.dumps({
                "id": f"US{i}", "title": f"Synthetic patent {i}", "abstract": words[:text_chars],
                "labels": [subclasses[i % 8], subclasses[(i // 8) % 8]], "date": "2020-01-07",
            }) + "\n")
    return path


def lock_holders(engine) -> list[int]:  # type: ignore[no-untyped-def]
    # A bigint advisory key shows as classid (high 32 bits) / objid (low 32 bits), objsubid 1.
    return [pid for (pid,) in query(
        engine,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND classid = 0 "
        "AND objid = :k AND granted",
        k=locks.INGEST,
    )]


def wait(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


