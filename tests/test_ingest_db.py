"""Ingestion into a real Postgres: every bad-input case row by row, the four formats end to end,
idempotent re-ingest, updates, canonical ids, a killed ingest, two concurrent ingests, the shared data.

Each test starts from empty corpus tables (``clean``); the database is this module's (conftest).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from patentml.exceptions import IngestError, SourceNotFoundError
from patentml.ingest import ingest
from tests.conftest import needs_shared, shared_data_files

from tests.ingest_helpers import (  # noqa: F401 - clean and cli_env are fixtures
    BAD,
    CORPUS_TABLES,
    FORMATS,
    assert_batch_matches,
    clean,
    cli,
    cli_env,
    corpus,
    cpc,
    ipc,
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


# --- bad input, row by row ------------------------------------------------------------------------

DUPLICATE_REASON = (
    "duplicate patent id US8926509 in this file with different labels: CPC labels B60W differ from "
    "H04L G06F at line 1 (the first record is kept)"
)
BAD_REJECTED = [
    ("line 2", "broken JSON: Unterminated string starting at (column 33)", None, True),
    ("line 4", "missing id", None, True),
    ("line 5", "empty abstract", "US8926602", True),
    ("line 6", "null abstract", "US8926603", True),
    ("line 7", "no valid label (got ['XYZ', '12AB'])", "US8926604", True),
    (
        "line 8",
        "dropped labels that are not subclass codes: 'XYZ', '12AB' (the record is kept with its valid labels)",
        "US8926605",
        False,
    ),
    ("line 9", "line is not valid UTF-8: byte 0xE9 at byte 37 of the line", None, True),
    ("line 10", DUPLICATE_REASON, "US8926509", True),
    (
        "line 14",
        "abstract is not valid Unicode: lone surrogate U+D800 at character 27 (an escaped \\ud800 without its pair)",
        "US8926607",
        True,
    ),
]


def test_bad_input_rows_land_in_rejected_records_with_reasons(engine) -> None:  # type: ignore[no-untyped-def]
    (summary,) = ingest(engine, [BAD])
    # 13 non-blank lines (lines 3 and 11 are blank: skipped, not read, not rejected); lines 12 and 13
    # repeat line 1's patent (IPC labels merged; CPC identical) and count as unchanged.
    assert_batch_matches(engine, summary, read=13, stored=3, unchanged=2, rejected=8, labels_dropped=1)
    assert summary.format == "jsonl" and summary.source == str(BAD)
    assert rejected(engine, summary.batch_id) == BAD_REJECTED
    rows = query(
        engine, "SELECT DISTINCT batch_id, source FROM rejected_records"
    )
    assert rows == [(summary.batch_id, str(BAD))]
    assert not [p for (p,) in query(engine, "SELECT position FROM rejected_records") if p in ("line 3", "line 11")]

    snippets = dict(query(engine, "SELECT position, snippet FROM rejected_records WHERE whole"))
    assert snippets["line 2"] == '{"id": "US8926601", "abstract": "this line is cut off'
    assert snippets["line 9"] == '{"id": "US8926606", "abstract": "Caf\ufffd cr\ufffdme maker.", "labels": ["A47J"]}'
    assert snippets["line 14"] == "An escaped lone surrogate \ufffd is not Unicode."

    # What was kept: the first record of the duplicated id, its labels normalised from
    # h04l / H04L 29/06 / H04L0029060000 / G06F 21/60, and the IPC set of line 12 beside them.
    assert query(engine, "SELECT patent_id FROM patents ORDER BY 1") == [("US8926509",), ("US8926605",), ("US8926608",)]
    assert patent(engine, "US8926509") == (
        "Secure data transfer",
        "A method transfers data securely between two nodes.",
        dt.date(2015, 1, 6),
        "jsonl:bad.jsonl",
    )
    assert labels(engine, "US8926509") == cpc("H04L", "G06F") + ipc("H04L", "G06F")
    assert labels(engine, "US8926605") == ipc("A61K", "C07D")
    # Tabs, quotes and backslashes survive COPY's text format.
    assert patent(engine, "US8926608") == (
        "Kept", 'A plough with a "quoted" share,\ta tab and a back\\slash.', dt.date(2015, 1, 6), "jsonl:bad.jsonl"
    )
    assert scalar(engine, "SELECT count(*) FROM patent_sources") == 3


def _many_lines(n: int, start: int = 9_000_000) -> bytes:
    # Varied text so the compressed file is long enough to cut in the middle.
    return b"".join(
        json.dumps({"id": f"US{start + i}", "abstract": f"abstract {i} " + str(i * 7919) * 20, "labels": ["A01B"]})
        .encode()
        + b"\n"
        for i in range(n)
    )


def test_truncated_gzip_keeps_rows_before_the_break(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = gzip.compress(_many_lines(2000))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    (summary,) = ingest(engine, [path], strict=False)
    kept = summary.stored
    assert 0 < kept < 2000
    # Not "succeeded": the rest of the file was never read, and the batch says where it broke off.
    assert_batch_matches(engine, summary, "partial", read=kept + 1, stored=kept, rejected=1)
    assert summary.message.startswith(f"the file broke off after line {kept}: the file ends early or is corrupt")
    ((position, reason, patent_id, whole),) = rejected(engine, summary.batch_id)
    assert position == f"after line {kept}" and patent_id is None and whole
    assert reason.startswith("the file ends early or is corrupt (EOFError: Compressed file ended")
    assert reason.endswith("records before this point were kept, the rest of the file was not read")
    # Exactly the first `kept` lines, in order.
    assert query(engine, "SELECT min(patent_id), max(patent_id), count(*) FROM patents") == [
        ("US9000000", f"US{9_000_000 + kept - 1}", kept)
    ]


def test_cpc_and_ipc_records_of_one_patent_across_two_files(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = write_jsonl(tmp_path / "cpc.jsonl", [rec("US7000001", ["H04L", "G06F"]), rec("US7000002", ["A01B"])])
    second = write_jsonl(
        tmp_path / "ipc.jsonl", [rec("7000001", ["H04L 29/06", "H04W"], "IPC"), rec("US7000003", ["B65D"], "IPC")]
    )
    one, two = ingest(engine, [first, second])
    assert_batch_matches(engine, one, read=2, stored=2)
    # The IPC set is new information about a known patent: an update, not a rejection.
    assert_batch_matches(engine, two, read=2, stored=1, updated=1)
    assert labels(engine, "US7000001") == cpc("H04L", "G06F") + ipc("H04L", "H04W")
    assert labels(engine, "US7000003") == ipc("B65D")
    assert scalar(engine, "SELECT count(*) FROM patents") == 3
    again = ingest(engine, [first, second])
    assert [(s.stored, s.updated, s.unchanged) for s in again] == [(0, 0, 2), (0, 0, 2)]


def test_missing_source_or_format_is_an_error_naming_it_and_writes_nothing(
    engine, cli_env: dict[str, str], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    # A path that matches nothing is a mistake on the command line: said before anything is read.
    # (A file that exists but cannot be read is a failed batch: tests/test_ingest_faults.py.)
    good = write_jsonl(tmp_path / "good.jsonl", [rec("US7000001", ["A01B"])])
    with pytest.raises(SourceNotFoundError, match=r"missing\.jsonl"):
        ingest(engine, [good, tmp_path / "missing.jsonl"])
    with pytest.raises(SourceNotFoundError, match=r"nothing-\*\.jsonl"):
        ingest(engine, [str(tmp_path / "nothing-*.jsonl")])
    with pytest.raises(IngestError, match=r"unknown format 'csv'"):
        ingest(engine, [good], fmt="csv")
    for table in ("ingest_batches", "patents", "rejected_records"):
        assert scalar(engine, f"SELECT count(*) FROM {table}") == 0, table

    proc = cli(cli_env, "ingest", str(good), str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 1
    assert "patentml: error: source" in proc.stderr and "missing.jsonl" in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert scalar(engine, "SELECT count(*) FROM ingest_batches") == 0


def test_a_parser_crash_mid_batch_raises_its_error_and_writes_nothing(engine) -> None:  # type: ignore[no-untyped-def]
    from patentml.ingest.loader import load_items
    from patentml.ingest.records import PatentRecord

    def items():  # type: ignore[no-untyped-def]
        for i in range(20_000):  # more than one COPY block, so some rows reached the server
            yield PatentRecord(f"US{5_000_000 + i}", "An abstract. " * 20, {"CPC": ["A01B"]}, "x", f"line {i + 1}")
        raise RuntimeError("parser bug")

    with pytest.raises(RuntimeError, match="parser bug"):
        load_items(engine, items(), source="x.jsonl", source_key="jsonl:x.jsonl", fmt="jsonl")
    for table in CORPUS_TABLES:
        if table != "ingest_batches":
            assert scalar(engine, f"SELECT count(*) FROM {table}") == 0, table
    # The batch's data is rolled back, but not the fact that it failed, nor why.
    assert query(engine, "SELECT batch_id, source, format, status, message, finished_at IS NOT NULL FROM ingest_batches") == [
        (1, "x.jsonl", "jsonl", "failed", "RuntimeError: parser bug", True)
    ]


# --- the four formats end to end ------------------------------------------------------------------


def test_weekly_xml_grants(engine) -> None:  # type: ignore[no-untyped-def]
    path = FORMATS / "ipg180102.xml"
    (summary,) = ingest(engine, [path])
    assert summary.format == "uspto-xml"
    # 7 documents: 3 grants stored, the sequence listing skipped, the design grant (no abstract),
    # the document that does not parse and the entity bomb rejected.
    assert_batch_matches(engine, summary, read=7, stored=3, rejected=3, skipped=1, labels_dropped=1)
    assert rejected(engine, summary.batch_id) == [
        (
            "document 2 (line 223)",
            "dropped labels that are not subclass codes: 'I04L' (the record is kept with its valid labels)",
            "US9855001",
            False,
        ),
        ("document 3 (line 313)", "no abstract (design grant)", "USD807000", True),
        ("document 5 (line 383)", "XML does not parse: mismatched tag at file line 399, column 3", None, True),
        ("document 6 (line 401)", "entity declaration refused ('lol'): entities are never expanded", None, True),
    ]
    assert query(engine, "SELECT snippet FROM rejected_records WHERE position LIKE 'document 5%'") == [("</abstract>",)]
    grant_date = dt.date(2018, 1, 2)
    assert query(engine, "SELECT patent_id, title, date, source FROM patents ORDER BY patent_id") == [
        ("US9855000", "Secure key exchange for ad hoc networks", grant_date, "uspto-xml:ipg180102.xml"),
        ("US9855001", "Pyridine compounds for treating inflammation", grant_date, "uspto-xml:ipg180102.xml"),
        ("USPP28901", "Rose plant named \u2018KORmarter\u2019", grant_date, "uspto-xml:ipg180102.xml"),
    ]
    assert patent(engine, "US9855000")[1] == (  # type: ignore[index]
        "A first node derives a session key Ks from a nonce and a shared secret, and sends the nonce "
        "to a second node \u2014 which derives the same key. The key is refreshed periodically."
    )
    assert labels(engine, "US9855000") == cpc("H04L", "G06F", "H04W") + ipc("H04L", "G06F")
    assert labels(engine, "US9855001") == cpc("A61K", "C07D") + ipc("A61K")
    assert labels(engine, "USPP28901") == cpc("A01H") + ipc("A01H")
    # The field-of-search codes are never labels.
    assert scalar(engine, "SELECT count(*) FROM patent_labels WHERE subclass IN ('G06Q', 'H04K', 'A61P')") == 0


def test_uspto2m_array(engine) -> None:  # type: ignore[no-untyped-def]
    (summary,) = ingest(engine, [FORMATS / "2015_USPTO.json"])
    assert summary.format == "uspto2m"
    assert_batch_matches(engine, summary, read=6, stored=3, rejected=3, labels_dropped=1)
    assert rejected(engine, summary.batch_id) == [
        (
            "record 2",
            "dropped labels that are not subclass codes: 'XYZ' (the record is kept with its valid labels)",
            "US8926510",
            False,
        ),
        ("record 3", "missing No (patent number)", None, True),
        ("record 4", "empty Abstract", "US8926512", True),
        ("record 5", "no valid label (got ['12AB', 'I04L'])", "USD712345", True),
    ]
    assert query(engine, "SELECT patent_id, title, abstract, date FROM patents ORDER BY patent_id") == [
        (
            "US8926509",
            "method and system for secure data transfer",
            "a method for transferring data securely between two nodes using a shared key is disclosed",
            None,
        ),
        (
            "US8926510",
            "rotary cutting tool",
            "a rotary cutting tool includes a shank and a cutting head with helical flutes",
            None,
        ),
        ("USRE46123", "reissued fastener", "a fastener with a threaded shank and a locking washer", None),
    ]
    assert labels(engine, "US8926509") == cpc("H04L", "G06F")
    assert labels(engine, "US8926510") == cpc("B23C", "B23B")  # "b23b" normalised, the repeat dropped
    assert labels(engine, "USRE46123") == cpc("F16B")


def test_patentsview_folder(engine) -> None:  # type: ignore[no-untyped-def]
    folder = FORMATS / "patentsview"
    (summary,) = ingest(engine, [folder])
    assert (summary.format, summary.source) == ("patentsview", str(folder))
    # 8 g_patent rows (one with an unusable id, one without g_cpc_current rows: stored unlabelled) and
    # 2 summaries of orphan rows (skipped).
    assert_batch_matches(engine, summary, read=10, stored=5, rejected=3, skipped=2, labels_dropped=1, unlabelled=1)
    assert rejected(engine, summary.batch_id) == [
        (
            "g_patent.tsv line 9",
            "unusable patent id 'X-12': expected an optional country code, an optional kind prefix "
            "(D, PP, RE, H, T) and digits, e.g. 'US8926509', 'USD512345', 'RE42345'",
            None,
            True,
        ),
        ("g_patent.tsv line 4", "no abstract in g_patent_abstract.tsv", "US10000001", True),
        (
            "g_patent.tsv line 7",
            "dropped labels that are not subclass codes: 'Q 99 Z Q99Z1/00' (the record is kept with its valid labels)",
            "US10000004",
            False,
        ),
        ("g_patent.tsv line 5", "no abstract in g_patent_abstract.tsv (design patent)", "USD830000", True),
    ]
    day = dt.date(2018, 6, 19)
    assert query(engine, "SELECT patent_id, title, abstract, date FROM patents ORDER BY patent_id") == [
        (
            "US10000000",
            "Coherent LADAR using intra-pixel quadrature detection",
            "A LADAR system receives light in each pixel and detects its quadrature components.",
            day,
        ),
        ("US10000002", "Multi-label wireless handover", "A handover method for wireless terminals.", day),
        ("US10000003", "Patent without a CPC row", "An abstract of a patent that has no CPC row.", day),
        ("US10000004", 'The "best" coffee maker', 'A coffee maker with a "smart" heater\nthat spans two lines.', day),
        ("USRE46999", "Threaded fastener", "A threaded fastener with a locking washer.", dt.date(2018, 8, 14)),
    ]
    # Labels ordered by cpc_sequence, repeats of a subclass dropped, "04"+"N" composed to H04N.
    assert labels(engine, "US10000000") == cpc("G01S", "H04N")
    assert labels(engine, "US10000002") == cpc("H04L", "G06F", "H04W")
    assert labels(engine, "US10000003") == []
    assert labels(engine, "US10000004") == cpc("A47J")
    assert labels(engine, "USRE46999") == cpc("F16B")


def test_jsonl_records(engine) -> None:  # type: ignore[no-untyped-def]
    (summary,) = ingest(engine, [FORMATS / "records.jsonl"])
    assert summary.format == "jsonl"
    assert_batch_matches(engine, summary, read=16, stored=5, rejected=11, labels_dropped=1, unlabelled=1)
    assert [r[0] for r in rejected(engine, summary.batch_id)] == [
        "line 4", "line 5", "line 6", "line 7", "line 8", "line 9", "line 10", "line 11", "line 12",
        "line 15", "line 16", "line 18",
    ]
    assert query(engine, "SELECT patent_id, title, date FROM patents ORDER BY patent_id") == [
        ("US8926509", "Secure data transfer", dt.date(2015, 1, 6)),
        ("US8926510", None, None),
        ("US8926511", "Pyridine compounds", dt.date(2015, 1, 6)),
        ("US8926520", None, None),  # "labels": []: a new filing, stored without labels
        ("USD512345", "Chair", dt.date(2005, 1, 4)),
    ]
    assert labels(engine, "US8926510") == cpc("H04L", "B60W")
    assert labels(engine, "US8926511") == ipc("A61K")
    assert labels(engine, "USD512345") == cpc("A47C")


# --- re-ingest, updates, canonical ids ------------------------------------------------------------

ALL_FORMATS = [FORMATS / "ipg180102.xml", FORMATS / "2015_USPTO.json", FORMATS / "patentsview",
               FORMATS / "records.jsonl", BAD]


def test_reingest_is_a_no_op(engine) -> None:  # type: ignore[no-untyped-def]
    first = ingest(engine, ALL_FORMATS)
    before = corpus(engine)
    seen_before = dict(query(engine, "SELECT patent_id, last_seen_at FROM patents"))
    second = ingest(engine, ALL_FORMATS)
    assert [(s.stored, s.updated) for s in second] == [(0, 0)] * len(ALL_FORMATS)
    for a, b in zip(first, second):
        assert b.unchanged == a.stored + a.updated + a.unchanged
        assert (b.read, b.rejected, b.skipped) == (a.read, a.rejected, a.skipped)
    assert corpus(engine) == before
    # Re-reading is recorded: the patents were seen again, and each batch keeps its own rejects.
    seen_after = dict(query(engine, "SELECT patent_id, last_seen_at FROM patents"))
    assert all(seen_after[p] > seen_before[p] for p in seen_before)
    assert scalar(engine, "SELECT count(*) FROM ingest_batches WHERE status = 'succeeded'") == 2 * len(ALL_FORMATS)


def test_same_file_from_another_folder_is_the_same_source(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ingest(engine, [FORMATS / "2015_USPTO.json"])
    before = corpus(engine)
    copy = tmp_path / "mirror" / "2015_USPTO.json"
    copy.parent.mkdir()
    copy.write_bytes((FORMATS / "2015_USPTO.json").read_bytes())
    (summary,) = ingest(engine, [copy])
    assert (summary.stored, summary.updated, summary.unchanged) == (0, 0, 3)
    assert corpus(engine) == before


def test_changed_records_in_a_new_version_of_the_file_are_updated(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = write_jsonl(
        tmp_path / "v1" / "weekly.jsonl",
        [
            rec("US7100001", ["H04L", "G06F"], date="2015-01-06"),
            rec("US7100002", ["A01B", "A01C"]),
            rec("US7100003", ["B65D"]),
        ],
    )
    (one,) = ingest(engine, [v1])
    assert_batch_matches(engine, one, read=3, stored=3)
    before = {row[0]: row for row in corpus(engine)[0]}
    v2 = write_jsonl(
        tmp_path / "v2" / "weekly.jsonl",
        [
            rec("US7100001", ["H04L", "G06F"], abstract="A corrected abstract.", date="2015-01-06"),
            rec("US7100002", ["A01C", "A01B", "A01D"]),  # labels reordered and one added
            rec("US7100003", ["B65D"]),  # unchanged
            rec("US7100004", ["F16B"]),  # new
        ],
    )
    (two,) = ingest(engine, [v2])
    assert_batch_matches(engine, two, read=4, stored=1, updated=2, unchanged=1)
    assert patent(engine, "US7100001") == ("Title of US7100001", "A corrected abstract.", dt.date(2015, 1, 6), "jsonl:weekly.jsonl")
    assert labels(engine, "US7100001") == cpc("H04L", "G06F")
    assert labels(engine, "US7100002") == cpc("A01C", "A01B", "A01D")
    after = {row[0]: row for row in corpus(engine)[0]}
    # patent_id, title, abstract, date, source, content_hash, first_seen_at, updated_at, first/last batch
    for pid in ("US7100001", "US7100002"):
        assert after[pid][9] == two.batch_id and after[pid][8] == one.batch_id
        assert after[pid][7] > before[pid][7]
        assert after[pid][6] == before[pid][6]
    assert after["US7100001"][5] != before["US7100001"][5]  # the text changed, so did its hash
    assert after["US7100003"] == before["US7100003"]
    assert after["US7100004"][8:] == (two.batch_id, two.batch_id)
    assert query(engine, "SELECT patent_id, batch_id FROM patent_sources ORDER BY 1") == [
        ("US7100001", two.batch_id), ("US7100002", two.batch_id), ("US7100003", one.batch_id),
        ("US7100004", two.batch_id),
    ]


def test_stale_statistics_do_not_make_a_reingest_quadratic(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A regression: statistics taken before a source's rows were added said that source was empty.

    Classifying the records by joining patent_sources was then planned as a nested loop over a
    materialised "one row" that held every row of the last batch: n^2 (80k records took hours).
    """
    # Long abstracts: the planner guesses many staged rows from the pages, so it prefers the
    # materialised scan (12k records were enough for the bad plan).
    n = 16_000
    a = synthetic(tmp_path / "a.jsonl", range(30_000_000, 30_000_000 + n), text_chars=1800)
    b = tmp_path / "b.jsonl"
    b.write_bytes(a.read_bytes())  # the same records from a second source
    tables = ("patents", "patent_sources", "patent_labels")
    with engine.begin() as conn:
        for table in tables:
            conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
    try:
        ingest(engine, [a])
        with engine.begin() as conn:
            conn.execute(text("ANALYZE patents, patent_sources, patent_labels"))  # b's rows are not there yet
        started = time.perf_counter()
        (first,) = ingest(engine, [b])
        first_seconds = time.perf_counter() - started
        started = time.perf_counter()
        (again,) = ingest(engine, [b])
        again_seconds = time.perf_counter() - started
    finally:
        with engine.begin() as conn:
            for table in tables:
                conn.execute(text(f"ALTER TABLE {table} RESET (autovacuum_enabled)"))
    assert (first.unchanged, again.unchanged) == (n, n)
    # Re-reading b does less work than reading it the first time; quadratic, it took 7x longer (16k records).
    assert again_seconds < 1.5 * first_seconds + 0.5, (first_seconds, again_seconds)


def test_canonical_ids_across_files_are_one_patent(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record = {"title": "Secure data transfer", "abstract": "A method transfers data.", "labels": ["H04L"]}
    files = [
        write_jsonl(tmp_path / "a.jsonl", [{"id": "US08926509", **record}]),
        write_jsonl(tmp_path / "b.jsonl", [{"id": "08926509", **record}]),
        write_jsonl(tmp_path / "c.jsonl", [{"id": "8926509", **record}]),
    ]
    summaries = ingest(engine, files)
    assert [(s.stored, s.updated, s.unchanged) for s in summaries] == [(1, 0, 0), (0, 0, 1), (0, 0, 1)]
    assert query(engine, "SELECT patent_id FROM patents") == [("US8926509",)]
    assert labels(engine, "US8926509") == cpc("H04L")
    assert query(engine, "SELECT source FROM patent_sources ORDER BY 1") == [
        ("jsonl:a.jsonl",), ("jsonl:b.jsonl",), ("jsonl:c.jsonl",)
    ]


# --- a killed ingest, two concurrent ingests ------------------------------------------------------


def test_killed_ingest_leaves_nothing_and_a_rerun_completes(engine, cli_env: dict[str, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    n = 100_000
    path = synthetic(tmp_path / "big.jsonl", range(10_000_000, 10_000_000 + n), text_chars=120)
    proc = popen(cli_env, "ingest", "--quiet", str(path))
    try:
        wait(lambda: lock_holders(engine) or proc.poll() is not None, 60, "the ingest to start its batch")
        (backend,) = lock_holders(engine)
        # Mid-batch: the COPY of the records is running (or the upserts after it).
        wait(
            lambda: scalar(engine, "SELECT query FROM pg_stat_activity WHERE pid = :p AND state = 'active'", p=backend)
            is not None,
            30,
            "the batch's COPY",
        )
        time.sleep(0.3)
        activity = scalar(engine, "SELECT query FROM pg_stat_activity WHERE pid = :p", p=backend)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"
    assert activity.lstrip().upper().startswith(("COPY", "CREATE", "INSERT", "SELECT", "UPDATE", "DELETE", "WITH"))
    # Postgres notices the dead client, rolls the transaction back and frees the lock.
    wait(lambda: not lock_holders(engine), 60, "the killed batch to be rolled back")
    for table in CORPUS_TABLES:
        assert scalar(engine, f"SELECT count(*) FROM {table}") == 0, table

    done = cli(cli_env, "ingest", "--quiet", "--json", str(path))
    assert done.returncode == 0, done.stderr
    (summary,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert {k: summary[k] for k in ("read", "stored", "updated", "unchanged", "rejected", "skipped")} == {
        "read": n, "stored": n, "updated": 0, "unchanged": 0, "rejected": 0, "skipped": 0,
    }
    assert query(engine, "SELECT status, n_read, n_stored FROM ingest_batches") == [("succeeded", n, n)]
    assert scalar(engine, "SELECT count(*) FROM patents") == n
    assert scalar(engine, "SELECT count(*) FROM patent_labels") == sum(
        1 if i % 8 == (i // 8) % 8 else 2 for i in range(10_000_000, 10_000_000 + n)
    )


def test_concurrent_ingests_of_overlapping_files_are_consistent(engine, cli_env: dict[str, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = synthetic(tmp_path / "a.jsonl", range(20_000_000, 20_008_000))
    b = synthetic(tmp_path / "b.jsonl", range(20_004_000, 20_012_000))
    c = synthetic(tmp_path / "c.jsonl", range(20_008_000, 20_016_000))
    first = popen(cli_env, "ingest", "--quiet", "--json", str(a), str(b))
    second = popen(cli_env, "ingest", "--quiet", "--json", str(c), str(b))
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    for proc, (out, err) in zip((first, second), outputs):
        assert proc.returncode == 0, err
    summaries = [s for out, _ in outputs for s in json.loads(out.strip().splitlines()[-1])]
    assert len(summaries) == 4 and all(s["rejected"] == 0 and s["updated"] == 0 for s in summaries)
    ids = range(20_000_000, 20_016_000)
    assert sum(s["stored"] for s in summaries) == len(ids)
    assert scalar(engine, "SELECT count(*) FROM patents") == len(ids)
    # b.jsonl was read twice: whichever batch came second found every record unchanged.
    b_batches = sorted((s["stored"], s["unchanged"]) for s in summaries if s["source"] == str(b))
    assert b_batches[0] == (0, 8000)
    assert scalar(engine, "SELECT count(*) FROM patent_labels") == sum(1 if i % 8 == (i // 8) % 8 else 2 for i in ids)
    assert scalar(
        engine,
        "SELECT count(*) FROM (SELECT patent_id FROM patent_labels GROUP BY patent_id, scheme "
        "HAVING count(*) <> max(position) + 1 OR count(*) FILTER (WHERE is_main) <> 1) broken",
    ) == 0
    assert query(engine, "SELECT status, count(*) FROM ingest_batches GROUP BY status") == [("succeeded", 4)]
    assert scalar(engine, "SELECT count(*) FROM patents WHERE patent_id NOT IN (SELECT patent_id FROM patent_labels)") == 0


# --- the shared sample data -----------------------------------------------------------------------


@needs_shared
def test_shared_data_counts(engine) -> None:  # type: ignore[no-untyped-def]
    files = shared_data_files()
    first = ingest(engine, files)
    assert sum(s.read for s in first) == 7_699 + 12_425
    assert scalar(engine, "SELECT count(*) FROM patents") == 20_107
    assert scalar(engine, "SELECT count(DISTINCT patent_id) FROM patent_labels WHERE scheme = 'CPC'") == 7_699
    assert scalar(engine, "SELECT count(DISTINCT patent_id) FROM patent_labels WHERE scheme = 'IPC'") == 12_425
    assert scalar(
        engine,
        "SELECT count(*) FROM (SELECT patent_id FROM patent_labels GROUP BY patent_id "
        "HAVING count(DISTINCT scheme) = 2) both_schemes",
    ) == 17
    assert scalar(engine, "SELECT count(*) FROM rejected_records") == 0
    assert sum(s.rejected for s in first) == 0
    before = corpus(engine)
    second = ingest(engine, files)
    assert [(s.stored, s.updated, s.rejected) for s in second] == [(0, 0, 0)] * len(files)
    assert sum(s.unchanged for s in second) == 7_699 + 12_425
    assert corpus(engine) == before
