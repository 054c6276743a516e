"""Source discovery, format detection and the four parsers, on small files in the real layouts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import io
import json
import shutil
import socket
import zipfile
from pathlib import Path

import pytest

from patentml.exceptions import IngestError, SourceNotFoundError, UnknownFormatError
from patentml.ingest.formats import get_parser, iter_items, parse_sources, parse_stream
from patentml.ingest.formats import patentsview as pv
from patentml.ingest.formats.usptoxml import parse_document
from patentml.ingest.records import Item, PatentRecord, RejectedRecord, SkippedRecord
from patentml.ingest.sources import (
    StreamRef,
    detect_format,
    expand_sources,
    iter_streams,
    list_streams,
    open_binary,
    plan_sources,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"


def parse(spec: str | Path, forced_format: str | None = None) -> list[Item]:
    return [item for _, item in parse_sources([spec], forced_format)]


def summary(items: list[Item]) -> list[tuple[object, ...]]:
    """What each item says, without text: kind, position, id, then labels+dropped or the reason."""
    out: list[tuple[object, ...]] = []
    for item in items:
        if isinstance(item, PatentRecord):
            out.append(("ok", item.position, item.patent_id, item.labels, item.dropped))
        elif isinstance(item, RejectedRecord):
            out.append(("rejected", item.position, item.patent_id, item.reason))
        else:
            out.append(("skipped", item.position, item.reason))
    return out


def without_source(items: list[Item]) -> list[Item]:
    return [dataclasses.replace(item, source="") for item in items]


def gzip_file(src: Path, dest: Path) -> Path:
    dest.write_bytes(gzip.compress(src.read_bytes()))
    return dest


# --- JSON Lines -----------------------------------------------------------------------------------

JSONL_EXPECTED = [
    ("ok", "line 1", "US8926509", {"CPC": ["H04L", "G06F"]}, []),
    ("ok", "line 3", "US8926510", {"CPC": ["H04L", "B60W"]}, []),
    ("ok", "line 4", "US8926511", {"IPC": ["A61K"]}, ["XYZ", "12AB"]),
    ("rejected", "line 5", None, "broken JSON: Unterminated string starting at (column 33)"),
    ("rejected", "line 6", None, "line is not valid UTF-8: byte 0xE9 at byte 37 of the line"),
    ("rejected", "line 7", None, "missing id"),
    ("rejected", "line 8", None, "missing id"),
    ("rejected", "line 9", "US8926514", "empty abstract"),
    ("rejected", "line 10", "US8926515", "null abstract"),
    ("rejected", "line 11", "US8926516", "no valid label (got ['XYZ', '12AB', 'I04L'])"),
    ("rejected", "line 12", "US8926517", "bad date '2015-13-45': month must be in 1..12"),
    ("ok", "line 14", "USD512345", {"CPC": ["A47C"]}, []),
    ("rejected", "line 15", "US8926518", "unknown label_scheme 'ECLA' (expected CPC or IPC)"),
    ("rejected", "line 16", None, "expected a JSON object, got a JSON list"),
    ("ok", "line 17", "US8926520", {}, []),  # "labels": [] is a new filing: stored unlabelled
    (
        "rejected",
        "line 18",
        None,
        "unusable patent id 'XYZ': expected an optional country code, an optional kind prefix "
        "(D, PP, RE, H, T) and digits, e.g. 'US8926509', 'USD512345', 'RE42345'",
    ),
]


def test_jsonl_records_rejects_and_positions() -> None:
    items = parse(FIXTURES / "records.jsonl")
    assert summary(items) == JSONL_EXPECTED
    first, second, third = items[0], items[1], items[2]
    assert isinstance(first, PatentRecord)
    assert first.title == "Secure data transfer"
    assert first.abstract == "A method transfers data securely between two nodes."
    assert first.date == dt.date(2015, 1, 6)
    assert first.source == str(FIXTURES / "records.jsonl")  # not the record's own "source" field
    assert isinstance(second, PatentRecord) and second.title is None and second.date is None
    assert isinstance(third, PatentRecord) and third.date == dt.date(2015, 1, 6)
    design = items[11]
    assert isinstance(design, PatentRecord) and design.date == dt.date(2005, 1, 4)


def test_jsonl_rejects_keep_a_snippet_of_the_line() -> None:
    items = parse(FIXTURES / "records.jsonl")
    broken, not_utf8 = items[3], items[4]
    assert isinstance(broken, RejectedRecord)
    assert broken.snippet == '{"id": "US8926512", "abstract": "this line is cut off'
    assert isinstance(not_utf8, RejectedRecord)
    assert not_utf8.snippet == '{"id": "US8926513", "abstract": "Caf\ufffd cr\ufffdme maker.", "labels": ["A47J"]}'
    long_line = json.dumps({"id": "US1", "abstract": "x" * 500, "labels": "A01B"})
    (item,) = parse_stream("jsonl", io.BytesIO(long_line.encode()), "mem")
    assert isinstance(item, RejectedRecord) and item.reason == "labels is a JSON str, not a list"
    assert item.snippet == long_line[:300]


def test_gzip_and_zip_are_read_transparently(tmp_path: Path) -> None:
    plain = without_source(parse(FIXTURES / "records.jsonl"))
    gz = gzip_file(FIXTURES / "records.jsonl", tmp_path / "records.jsonl.gz")
    with zipfile.ZipFile(tmp_path / "records.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(FIXTURES / "records.jsonl", "records.jsonl")
    assert without_source(parse(gz)) == plain
    zipped = parse(tmp_path / "records.zip")
    assert without_source(zipped) == plain
    assert zipped[0].source == f"{tmp_path / 'records.zip'}/records.jsonl"


def _many_lines(n: int) -> bytes:
    # Varied text so the compressed file is long enough to cut in the middle.
    return b"".join(
        json.dumps({"id": f"US{9000000 + i}", "abstract": f"abstract {i} " + str(i * 7919) * 20, "labels": ["A01B"]})
        .encode()
        + b"\n"
        for i in range(n)
    )


def test_truncated_gzip_keeps_rows_before_the_break(tmp_path: Path) -> None:
    data = gzip.compress(_many_lines(3000))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    items = parse(path)
    *records, last = items
    assert 0 < len(records) < 3000
    assert [r.position for r in records] == [f"line {i}" for i in range(1, len(records) + 1)]
    assert all(isinstance(r, PatentRecord) for r in records)
    assert isinstance(last, RejectedRecord)
    assert last.position == f"after line {len(records)}"
    assert last.reason.startswith("the file ends early or is corrupt (EOFError: Compressed file ended")
    assert "records before this point were kept" in last.reason


def test_truncated_gzip_in_json_array_and_xml(tmp_path: Path) -> None:
    records = [
        {"No": f"US{8000000 + i}", "Title": "t", "Abstract": "a " + str(i * 31) * 30, "Subclass_labels": ["A01B"]}
        for i in range(3000)
    ]
    data = gzip.compress(json.dumps(records).encode())
    cut = tmp_path / "2001_USPTO.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    *kept, last = parse(cut)
    assert 0 < len(kept) < 3000 and all(isinstance(r, PatentRecord) for r in kept)
    assert isinstance(last, RejectedRecord) and last.position == f"after record {len(kept)}"
    assert "EOFError" in last.reason

    xml = (FIXTURES / "ipg180102.xml").read_bytes() * 40
    cut_xml = tmp_path / "ipg180102.xml.gz"
    data = gzip.compress(xml)
    cut_xml.write_bytes(data[: len(data) * 3 // 4])
    *kept_xml, last_xml = parse(cut_xml)
    assert len(kept_xml) > 7
    assert isinstance(last_xml, RejectedRecord) and last_xml.position.startswith("after document ")
    assert "EOFError" in last_xml.reason


def test_corrupt_zip_member_is_reported_not_raised(tmp_path: Path) -> None:
    archive_path = tmp_path / "records.zip"
    with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("records.jsonl", _many_lines(50))
    raw = bytearray(archive_path.read_bytes())
    raw[raw.index(b"US9000049")] ^= 0x01  # flip a bit in the last line: the CRC check fails at the end
    archive_path.write_bytes(bytes(raw))
    items = parse(archive_path)
    assert isinstance(items[-1], RejectedRecord)
    assert "BadZipFile" in items[-1].reason
    assert sum(isinstance(i, PatentRecord) for i in items) >= 1


# --- USPTO-2M -------------------------------------------------------------------------------------


def test_uspto2m_array() -> None:
    items = parse(FIXTURES / "2015_USPTO.json")
    assert summary(items) == [
        ("ok", "record 1", "US8926509", {"CPC": ["H04L", "G06F"]}, []),
        ("ok", "record 2", "US8926510", {"CPC": ["B23C", "B23B"]}, ["XYZ"]),
        ("rejected", "record 3", None, "missing No (patent number)"),
        ("rejected", "record 4", "US8926512", "empty Abstract"),
        ("rejected", "record 5", "USD712345", "no valid label (got ['12AB', 'I04L'])"),
        ("ok", "record 6", "USRE46123", {"CPC": ["F16B"]}, []),
    ]
    first = items[0]
    assert isinstance(first, PatentRecord)
    assert first.title == "method and system for secure data transfer"
    assert first.abstract == (
        "a method for transferring data securely between two nodes using a shared key is disclosed"
    )
    assert first.date is None


def test_uspto2m_broken_array_keeps_what_parsed() -> None:
    items = parse(FIXTURES / "broken_USPTO.json")
    assert summary(items)[:2] == [
        ("ok", "record 1", "US9000001", {"CPC": ["A61K"]}, []),
        ("ok", "record 2", "US9000002", {"CPC": ["A61P", "C07D"]}, []),
    ]
    last = items[2]
    assert len(items) == 3 and isinstance(last, RejectedRecord)
    assert last.position == "record 3"
    assert last.reason.startswith("broken JSON array after record 2: ")
    assert last.reason.endswith("; the records before it were kept, the rest of the file was not read")
    assert last.ends_source


def test_uspto2m_not_an_array() -> None:
    items = list(parse_stream("uspto2m", io.BytesIO(b'{"No": "US1"}'), "x.json"))
    assert summary(items) == [
        ("rejected", "start of file", None, "expected a JSON array of records (USPTO-2M), found a JSON start_map")
    ]
    assert summary(list(parse_stream("uspto2m", io.BytesIO(b""), "x.json"))) == [
        ("rejected", "start of file", None, "empty file: expected a JSON array of records")
    ]


# --- USPTO XML ------------------------------------------------------------------------------------


def test_uspto_xml_weekly_grants() -> None:
    items = parse(FIXTURES / "ipg180102.xml")
    assert summary(items) == [
        ("ok", "document 1 (line 1)", "US9855000", {"CPC": ["H04L", "G06F", "H04W"], "IPC": ["H04L", "G06F"]}, []),
        ("ok", "document 2 (line 223)", "US9855001", {"CPC": ["A61K", "C07D"], "IPC": ["A61K"]}, ["I04L"]),
        ("rejected", "document 3 (line 313)", "USD807000", "no abstract (design grant)"),
        ("skipped", "document 4 (line 362)", "sequence listing (sequence-cwu), not a patent"),
        ("rejected", "document 5 (line 383)", None, "XML does not parse: mismatched tag at file line 399, column 3"),
        ("rejected", "document 6 (line 401)", None, "entity declaration refused ('lol'): entities are never expanded"),
        ("ok", "document 7 (line 423)", "USPP28901", {"CPC": ["A01H"], "IPC": ["A01H"]}, []),
    ]
    grant = items[0]
    assert isinstance(grant, PatentRecord)
    assert grant.title == "Secure key exchange for ad hoc networks"
    assert grant.date == dt.date(2018, 1, 2)
    assert grant.abstract == (
        "A first node derives a session key Ks from a nonce and a shared secret, and sends the nonce "
        "to a second node \u2014 which derives the same key. The key is refreshed periodically."
    )
    # Adjacent <p> elements stay apart; the field-of-search codes (G06Q, H04K, A61P) are never labels.
    second = items[1]
    assert isinstance(second, PatentRecord)
    assert second.abstract == "Compounds of formula (I) are disclosed. They reduce inflammation."
    all_labels = {
        label for item in items if isinstance(item, PatentRecord) for ls in item.labels.values() for label in ls
    }
    assert not all_labels & {"G06Q", "H04K", "A61P"}
    plant = items[6]
    assert isinstance(plant, PatentRecord) and plant.title == "Rose plant named \u2018KORmarter\u2019"
    broken = items[4]
    assert isinstance(broken, RejectedRecord) and broken.snippet == "</abstract>"
    design = items[2]
    assert isinstance(design, RejectedRecord) and design.snippet == "Chair"


def test_uspto_xml_application() -> None:
    (item,) = parse(FIXTURES / "ipa180104.xml")
    assert isinstance(item, PatentRecord)
    assert (item.patent_id, item.position) == ("US20180000001", "document 1 (line 1)")
    assert item.date == dt.date(2018, 1, 4)
    assert item.labels == {"CPC": ["B60W", "Y02T"], "IPC": ["B60W"]}
    assert item.title == "Hybrid vehicle drive control"
    assert item.abstract == "A controller switches the engine off when the battery charge exceeds a threshold."


def test_uspto_xml_refuses_external_entities_and_never_fetches_the_dtd(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the parser tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    xxe = (
        b'<?xml version="1.0"?>\n<!DOCTYPE us-patent-grant SYSTEM "http://example.invalid/grant.dtd" [\n'
        b'<!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>\n'
        b"<us-patent-grant><abstract>&xxe;</abstract></us-patent-grant>\n"
    )
    item = parse_document(xxe, "x.xml", "document 1 (line 1)")
    assert isinstance(item, RejectedRecord)
    assert item.reason == "entity declaration refused ('xxe'): entities are never expanded"
    remote_dtd = (FIXTURES / "ipa180104.xml").read_bytes().replace(
        b"us-patent-application-v44-2014-04-03.dtd", b"http://example.invalid/application.dtd"
    )
    assert isinstance(parse_document(remote_dtd, "x.xml", "document 1 (line 1)"), PatentRecord)


def test_uspto_xml_unknown_root_and_undefined_entity() -> None:
    other = b'<?xml version="1.0"?>\n<PATDOC><B110>1</B110></PATDOC>\n'
    item = parse_document(other, "x.xml", "document 1 (line 1)")
    assert isinstance(item, RejectedRecord)
    assert item.reason == "unexpected root element <PATDOC> (expected us-patent-grant or us-patent-application)"
    undefined = (
        b'<?xml version="1.0"?>\n<!DOCTYPE us-patent-grant SYSTEM "x.dtd">\n'
        b"<us-patent-grant>&nbsp;</us-patent-grant>\n"
    )
    item = parse_document(undefined, "x.xml", "document 2 (line 10)", first_line=10)
    assert isinstance(item, RejectedRecord)
    assert item.reason == "XML does not parse: undefined entity &nbsp; at file line 12, column 18"


# --- PatentsView ----------------------------------------------------------------------------------

ORPHANS = "g_patent.tsv (first: US9999999); not used"
PATENTSVIEW_EXPECTED = [
    (
        "rejected",
        "g_patent.tsv line 9",
        None,
        "unusable patent id 'X-12': expected an optional country code, an optional kind prefix "
        "(D, PP, RE, H, T) and digits, e.g. 'US8926509', 'USD512345', 'RE42345'",
    ),
    ("ok", "g_patent.tsv line 3", "US10000000", {"CPC": ["G01S", "H04N"]}, []),
    ("rejected", "g_patent.tsv line 4", "US10000001", "no abstract in g_patent_abstract.tsv"),
    ("ok", "g_patent.tsv line 2", "US10000002", {"CPC": ["H04L", "G06F", "H04W"]}, []),
    ("ok", "g_patent.tsv line 6", "US10000003", {}, []),  # no g_cpc_current row: not classified yet
    ("ok", "g_patent.tsv line 7", "US10000004", {"CPC": ["A47J"]}, ["Q 99 Z Q99Z1/00"]),
    ("rejected", "g_patent.tsv line 5", "USD830000", "no abstract in g_patent_abstract.tsv (design patent)"),
    ("ok", "g_patent.tsv line 8", "USRE46999", {"CPC": ["F16B"]}, []),
    ("skipped", "g_patent_abstract.tsv line 3", f"1 row(s) for 1 patent id(s) absent from {ORPHANS}"),
    ("skipped", "g_cpc_current.tsv line 5", f"1 row(s) for 1 patent id(s) absent from {ORPHANS}"),
]


def pv_tables() -> tuple[str, str, str]:
    return ("g_patent.tsv", "g_patent_abstract.tsv", "g_cpc_current.tsv")


def test_patentsview_folder_is_one_joined_unit() -> None:
    folder = FIXTURES / "patentsview"
    (unit,) = plan_sources([folder])
    assert unit.format == "patentsview" and unit.name == str(folder)
    assert [ref.base_name for ref in unit.streams] == list(pv_tables())
    items = list(iter_items(unit))
    assert summary(items) == PATENTSVIEW_EXPECTED
    assert {item.source for item in items} == {str(folder)}
    ladar = items[1]
    assert isinstance(ladar, PatentRecord)
    assert ladar.title == "Coherent LADAR using intra-pixel quadrature detection"
    assert ladar.date == dt.date(2018, 6, 19)
    assert ladar.abstract == "A LADAR system receives light in each pixel and detects its quadrature components."
    coffee = items[5]
    assert isinstance(coffee, PatentRecord)
    assert coffee.title == 'The "best" coffee maker'
    assert coffee.abstract == 'A coffee maker with a "smart" heater\nthat spans two lines.'


def test_patentsview_external_sort_spills_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = FIXTURES / "patentsview"
    in_memory = list(iter_items(plan_sources([folder])[0]))
    monkeypatch.setattr(pv, "MAX_RUNS", 3)  # force merge passes as well as runs
    spill = tmp_path / "spill"
    spill.mkdir()
    spilled = list(
        pv.parse_patentsview(
            folder / "g_patent.tsv",
            folder / "g_patent_abstract.tsv",
            folder / "g_cpc_current.tsv",
            source=str(folder),
            chunk_bytes=1,
            tmp_dir=spill,
        )
    )
    assert spilled == in_memory
    assert list(spill.iterdir()) == []


def test_patentsview_zipped_tables_and_missing_table(tmp_path: Path) -> None:
    for table in ("g_patent.tsv", "g_patent_abstract.tsv", "g_cpc_current.tsv"):
        with zipfile.ZipFile(tmp_path / f"{table}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(FIXTURES / "patentsview" / table, table)
    (unit,) = plan_sources([tmp_path])
    assert summary(list(iter_items(unit))) == PATENTSVIEW_EXPECTED
    (tmp_path / "g_cpc_current.tsv.zip").unlink()
    with pytest.raises(IngestError, match=r"lacks g_cpc_current\.tsv"):
        plan_sources([tmp_path])


def _synthetic_patentsview(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "g_patent.tsv", "w") as out:
        out.write('"patent_id"\t"patent_type"\t"patent_date"\t"patent_title"\n')
        for i in range(n):
            out.write(f'"{10000000 + i}"\t"utility"\t"2018-06-19"\t"Title {i}"\n')
    with open(folder / "g_patent_abstract.tsv", "w") as out:
        out.write('"patent_id"\t"patent_abstract"\n')
        for i in reversed(range(n)):  # not in id order: the join must not care
            out.write(f'"{10000000 + i}"\t"Abstract {i} ' + str(i * 7919) * 10 + '"\n')
    with open(folder / "g_cpc_current.tsv", "w") as out:
        columns = ("patent_id", "cpc_sequence", "cpc_section", "cpc_class", "cpc_subclass", "cpc_group", "cpc_type")
        out.write("\t".join(f'"{c}"' for c in columns) + "\n")
        for i in range(n):
            out.write(f'"{10000000 + i}"\t1\t"B"\t"B65"\t"B65D"\t"B65D1/00"\t"additional"\n')
            out.write(f'"{10000000 + i}"\t0\t"A"\t"01"\t"B"\t"A01B1/00"\t"inventional"\n')


def test_patentsview_truncated_table_keeps_rows_before_the_break(tmp_path: Path) -> None:
    folder = tmp_path / "pv"
    _synthetic_patentsview(folder, 3000)
    data = gzip.compress((folder / "g_cpc_current.tsv").read_bytes())
    (folder / "g_cpc_current.tsv").unlink()
    (folder / "g_cpc_current.tsv.gz").write_bytes(data[: len(data) // 2])
    items = list(iter_items(plan_sources([folder])[0]))
    first = items[0]
    assert isinstance(first, RejectedRecord)
    assert first.position.startswith("after g_cpc_current.tsv line ")
    assert "EOFError" in first.reason
    records = [i for i in items if isinstance(i, PatentRecord)]
    missing = [i for i in items[1:] if isinstance(i, RejectedRecord)]
    assert records and missing and len(records) + len(missing) == 3000
    assert records[0].labels == {"CPC": ["A01B", "B65D"]}
    # The patents whose rows may lie beyond the break are not taken for unclassified ones.
    assert {m.reason for m in missing} == {
        "no CPC subclass read: g_cpc_current.tsv was not read to its end, so the labels are unknown"
    }


def _peak_bytes(run: object) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        run()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_patentsview_memory_does_not_grow_with_the_tables(tmp_path: Path) -> None:
    peaks, sizes = [], []
    for n in (4000, 16000):
        folder = tmp_path / f"pv{n}"
        _synthetic_patentsview(folder, n)
        sizes.append(sum(p.stat().st_size for p in folder.iterdir()))
        tables = [folder / t for t in ("g_patent.tsv", "g_patent_abstract.tsv", "g_cpc_current.tsv")]

        def run() -> None:
            items = pv.parse_patentsview(*tables, chunk_bytes=128 * 1024, tmp_dir=tmp_path)
            assert sum(isinstance(item, PatentRecord) for item in items) == n  # noqa: B023

        peaks.append(_peak_bytes(run))
    assert sizes[1] > 4_000_000
    assert peaks[1] < 1.5 * peaks[0], f"peaks {peaks} for tables of {sizes} bytes"
    assert peaks[1] < sizes[1] / 2


@pytest.mark.parametrize("fmt", ["jsonl", "uspto2m", "uspto-xml"])
def test_single_stream_formats_run_in_constant_memory(tmp_path: Path, fmt: str) -> None:
    def write(path: Path, n: int) -> None:
        with open(path, "wb") as out:
            if fmt == "jsonl":
                out.write(_many_lines(n))
            elif fmt == "uspto2m":
                out.write(b"[")
                for i in range(n):
                    record = {"No": f"US{8000000 + i}", "Abstract": str(i) * 50, "Subclass_labels": ["A01B"]}
                    out.write((b"," if i else b"") + json.dumps(record).encode())
                out.write(b"]")
            else:
                week = (FIXTURES / "ipg180102.xml").read_bytes()
                for _ in range(n // 7):
                    out.write(week)

    list(parse_stream(fmt, io.BytesIO(b""), "warm-up"))  # imports are not what we measure
    peaks = []
    for n in (350, 1400) if fmt == "uspto-xml" else (2000, 8000):
        path = tmp_path / f"{n}.data"
        write(path, n)

        def run() -> None:
            with open(path, "rb") as stream:  # noqa: B023
                for _ in parse_stream(fmt, stream, str(path)):  # noqa: B023
                    pass

        peaks.append(_peak_bytes(run))
    assert peaks[1] < 1.5 * peaks[0] + 64 * 1024, f"peaks {peaks}"


def test_cpc_code_composes_subclass() -> None:
    assert pv.cpc_code("H", "H04", "H04L", "H04L5/00") == "H04L"
    assert pv.cpc_code("H", "04", "L", "H04L5/00") == "H04L"
    assert pv.cpc_code("H", "H04", "L", None) == "H04L"
    assert pv.cpc_code("H", "", "", "H04L5/00") == "H04L5/00"
    assert pv.cpc_code("Q", "99", "Z", None) == "Q 99 Z"


# --- Sources, detection, planning -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("2015_USPTO.json", b"", "uspto2m"),
        ("data/2015_USPTO.json.gz", b"", "uspto2m"),
        ("ipg180102.xml", b"", "uspto-xml"),
        ("ipa180104.xml", b"", "uspto-xml"),
        ("g_patent.tsv.zip", b"", "patentsview"),
        ("g_cpc_current.tsv", b"", "patentsview"),
        ("records.jsonl", b"", "jsonl"),
        ("dump.json", b"  \n[{\"No\": 1}]", "uspto2m"),
        ("dump.json", b'\xef\xbb\xbf{"id": "US1"}\n', "jsonl"),
        ("grants.xml", b'<?xml version="1.0"?>\n', "uspto-xml"),
        ("patents.tsv", b'"patent_id"\t"patent_title"\n', "patentsview"),
        ("x.zip/ipg180102.xml", b"", "uspto-xml"),
    ],
)
def test_detect_format(name: str, head: bytes, expected: str) -> None:
    assert detect_format(name, head) == expected


def test_unknown_format_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormatError, match=r"cannot tell the format of notes\.txt: it starts with b'hello"):
        detect_format("notes.txt", b"hello world")
    odd = tmp_path / "odd.tsv"
    odd.write_text("a\tb\n1\t2\n")
    with pytest.raises(UnknownFormatError, match=str(odd)):
        plan_sources([odd])


def test_forced_format_bypasses_detection(tmp_path: Path) -> None:
    odd = tmp_path / "odd.dat"
    odd.write_bytes(b"# exported by hand\n" + FIXTURES.joinpath("records.jsonl").read_bytes())
    with pytest.raises(UnknownFormatError, match="odd.dat"):
        plan_sources([odd])
    (unit,) = plan_sources([odd], forced_format="jsonl")
    assert unit.format == "jsonl"
    items = list(iter_items(unit))
    assert summary(items)[0] == ("rejected", "line 1", None, "broken JSON: Expecting value (column 1)")
    assert [s[1] for s in summary(items)[1:]] == [f"line {int(e[1].split()[1]) + 1}" for e in JSONL_EXPECTED]
    # Forcing the wrong format parses as that format: the array's lines are broken JSON Lines.
    items = parse(FIXTURES / "2015_USPTO.json", forced_format="jsonl")
    assert [i.position for i in items] == [f"line {n}" for n in range(1, 7)]
    assert all(isinstance(i, RejectedRecord) and i.reason.startswith("broken JSON") for i in items)
    with pytest.raises(IngestError, match="unknown format 'csv'"):
        plan_sources([odd], forced_format="csv")


def test_expand_sources(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for name in ("b/2.jsonl.gz", "b/1.xml", "a.json", "readme.md", ".hidden/x.jsonl", "c.zip", "d.tsv"):
        (root / name).write_bytes(b"")
    expected = [root / "a.json", root / "b" / "1.xml", root / "b" / "2.jsonl.gz", root / "c.zip", root / "d.tsv"]
    assert expand_sources([root]) == expected
    # Globs, explicit files of any name, and no repeats.
    found = expand_sources([str(root / "*.json"), root / "readme.md", root / "a.json"])
    assert found == [root / "a.json", root / "readme.md"]
    assert expand_sources([str(root / "**" / "*.xml")]) == [root / "b" / "1.xml"]


def test_missing_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"source '.*nope\.jsonl' not found"):
        expand_sources([FIXTURES / "records.jsonl", tmp_path / "nope.jsonl"])
    with pytest.raises(SourceNotFoundError, match=r"source pattern '.*\*\.xml' matched no file"):
        expand_sources([str(tmp_path / "*.xml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFoundError, match=r"source folder '.*empty' holds no data file"):
        expand_sources([tmp_path / "empty"])


def test_streams_of_a_zip_with_several_members(tmp_path: Path) -> None:
    archive_path = tmp_path / "week.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.write(FIXTURES / "ipa180104.xml", "ipa180104.xml")
        archive.write(FIXTURES / "records.jsonl", "sub/records.jsonl")
        archive.writestr("README.txt", "not data")
    assert [ref.member for ref in list_streams(archive_path)] == ["ipa180104.xml", "sub/records.jsonl"]
    names = [name for name, stream in iter_streams(archive_path) if stream.read(5)]
    assert names == [f"{archive_path}/ipa180104.xml", f"{archive_path}/sub/records.jsonl"]
    with pytest.raises(IngestError, match="2 data members"):
        with open_binary(archive_path):
            pass
    units = plan_sources([archive_path])
    assert [(u.format, u.name) for u in units] == [
        ("uspto-xml", f"{archive_path}/ipa180104.xml"),
        ("jsonl", f"{archive_path}/sub/records.jsonl"),
    ]
    gz = gzip_file(FIXTURES / "ipa180104.xml", tmp_path / "ipa180104.xml.gz")
    with open_binary(gz) as stream:
        assert stream.read(5) == b"<?xml"
    broken = tmp_path / "broken.zip"
    broken.write_bytes(archive_path.read_bytes()[:100])
    with pytest.raises(IngestError, match="not a readable zip archive"):
        list_streams(broken)


def test_get_parser_names_formats() -> None:
    assert callable(get_parser("jsonl"))
    with pytest.raises(IngestError, match="joins three tables"):
        get_parser("patentsview")
    with pytest.raises(IngestError, match="unknown format 'csv'"):
        get_parser("csv")


def test_stream_ref_names() -> None:
    ref = StreamRef(Path("/d/g_patent.tsv.zip"), "g_patent.tsv")
    assert ref.name == "/d/g_patent.tsv.zip/g_patent.tsv" and ref.base_name == "g_patent.tsv"
    assert StreamRef(Path("/d/ipg180102.xml.gz")).base_name == "ipg180102.xml"


def test_fixture_folder_plans_every_format() -> None:
    units = plan_sources([FIXTURES])
    assert [(u.format, Path(u.name).name) for u in units] == [
        ("uspto2m", "2015_USPTO.json"),
        ("uspto2m", "broken_USPTO.json"),
        ("uspto-xml", "ipa180104.xml"),
        ("uspto-xml", "ipg180102.xml"),
        ("patentsview", "patentsview"),
        ("jsonl", "records.jsonl"),
    ]
    counts = {Path(u.name).name: _counts(list(iter_items(u))) for u in units}
    assert counts == {
        "2015_USPTO.json": (3, 3, 0),
        "broken_USPTO.json": (2, 1, 0),
        "ipa180104.xml": (1, 0, 0),
        "ipg180102.xml": (3, 3, 1),
        "patentsview": (5, 3, 2),
        "records.jsonl": (5, 11, 0),
    }


def _counts(items: list[Item]) -> tuple[int, int, int]:
    return (
        sum(isinstance(i, PatentRecord) for i in items),
        sum(isinstance(i, RejectedRecord) for i in items),
        sum(isinstance(i, SkippedRecord) for i in items),
    )


def test_xml_is_detected_by_content_under_another_name(tmp_path: Path) -> None:
    copy = tmp_path / "weekly.xml"
    shutil.copy(FIXTURES / "ipg180102.xml", copy)
    assert summary(parse(copy)) == summary(parse(FIXTURES / "ipg180102.xml"))
