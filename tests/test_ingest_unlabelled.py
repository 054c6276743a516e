"""New filings on a real Postgres: records without labels are stored unlabelled, counted by ``db status``,
kept out of every split, and gain their labels when a later source brings them (issue 11)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from patentml.ingest import ingest
from patentml.splits import rebuild
from tests.ingest_helpers import (  # noqa: F401 - clean and cli_env are fixtures
    FORMATS,
    assert_batch_matches,
    clean,
    cli,
    cli_env,
    cpc,
    ipc,
    labels,
    patent,
    query,
    rejected,
    scalar,
    write_jsonl,
)

CLASSIFICATIONS = re.compile(rb"<classifications-(ipcr|cpc)>.*?</classifications-\1>\n", re.S)


def unclassified_application(folder: Path) -> Path:
    """The fixture application publication as it is before classification: no IPC, no CPC element."""
    folder.mkdir(parents=True, exist_ok=True)
    data = (FORMATS / "ipa180104.xml").read_bytes()
    stripped, n = CLASSIFICATIONS.subn(b"", data)
    assert n == 2
    path = folder / "ipa180104.xml"
    path.write_bytes(stripped)
    return path


def test_records_without_labels_are_stored_unlabelled_and_bad_labels_still_rejected(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_jsonl(
        tmp_path / "filings.jsonl",
        [
            {"id": "US20190000001", "title": "No labels key", "abstract": "A filing without a labels key."},
            {"id": "US20190000002", "abstract": "An empty list.", "labels": []},
            {"id": "US20190000003", "abstract": "A null list.", "labels": None, "label_scheme": "IPC"},
            {"id": "US20190000004", "abstract": "Labels given, none valid.", "labels": ["XYZ", "12AB"]},
            {"id": "US20190000005", "abstract": "Labels not a list.", "labels": "H04L"},
            {"id": "US20190000006", "abstract": "A classified one.", "labels": ["H04L"]},
        ],
    )
    (summary,) = ingest(engine, [path])
    assert_batch_matches(engine, summary, read=6, stored=4, rejected=2, unlabelled=3)
    assert rejected(engine, summary.batch_id) == [
        ("line 4", "no valid label (got ['XYZ', '12AB'])", "US20190000004", True),
        ("line 5", "labels is a JSON str, not a list", "US20190000005", True),
    ]
    assert [p for (p,) in query(engine, "SELECT patent_id FROM patents ORDER BY 1")] == [
        "US20190000001", "US20190000002", "US20190000003", "US20190000006",
    ]
    for pid in ("US20190000001", "US20190000002", "US20190000003"):
        assert labels(engine, pid) == []
    assert patent(engine, "US20190000001")[:2] == ("No labels key", "A filing without a labels key.")  # type: ignore[index]
    assert labels(engine, "US20190000006") == cpc("H04L")
    # Re-reading the file is a no-op for unlabelled records too.
    (again,) = ingest(engine, [path])
    assert (again.stored, again.updated, again.unchanged, again.unlabelled) == (0, 0, 4, 3)


def test_application_before_classification_and_uspto2m_without_labels(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    xml = unclassified_application(tmp_path / "ipa")
    array = tmp_path / "2016_USPTO.json"
    array.write_text(json.dumps([
        {"No": "US09000001", "Title": "t", "Abstract": "no labels key"},
        {"No": "US09000002", "Title": "t", "Abstract": "empty labels", "Subclass_labels": []},
        {"No": "US09000003", "Title": "t", "Abstract": "bad labels", "Subclass_labels": ["12AB"]},
    ]))
    one, two = ingest(engine, [xml, array], strict=False)
    assert_batch_matches(engine, one, read=1, stored=1, unlabelled=1)
    assert_batch_matches(engine, two, read=3, stored=2, rejected=1, unlabelled=2)
    assert labels(engine, "US20180000001") == []
    assert patent(engine, "US20180000001")[:2] == (  # type: ignore[index]
        "Hybrid vehicle drive control",
        "A controller switches the engine off when the battery charge exceeds a threshold.",
    )
    assert rejected(engine, two.batch_id) == [("record 3", "no valid label (got ['12AB'])", "US9000003", True)]


def test_labels_arrive_later_and_splits_leave_unlabelled_patents_out(engine, cli_env: dict[str, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Week 1: the application (unclassified) and an unlabelled JSON Lines copy of a grant to come.
    application = unclassified_application(tmp_path / "week1")
    early = write_jsonl(
        tmp_path / "week1" / "early.jsonl",
        [{"id": "US9855000", "title": "Secure key exchange for ad hoc networks", "abstract": "An early text."}],
    )
    labelled = write_jsonl(tmp_path / "week1" / "corpus.jsonl", [
        {"id": f"US{7_000_000 + i}", "abstract": f"Labelled patent {i}.", "labels": ["A01B" if i % 2 else "H04L"]}
        for i in range(40)
    ])
    ingest(engine, [application, early, labelled])
    assert scalar(engine, "SELECT count(*) FROM patents") == 42

    status = cli(cli_env, "db", "status")
    assert status.returncode == 0, status.stderr
    counts = dict(re.findall(r"^\s*(.+?): ([\d,]+)$", status.stdout, re.M))
    assert counts["patents"] == "42" and counts["unlabelled patents"] == "2"

    first = rebuild(engine, "CPC+IPC")
    members = {p for (p,) in query(engine, "SELECT patent_id FROM snapshot_members WHERE snapshot_id = :s",
                                   s=first.snapshot_id)}
    assert len(members) == 40 and not members & {"US20180000001", "US9855000"}
    assert sum(s["n_patents"] for s in first.stats if s["dataset"] == "full") == 40

    # Week 2: the classified publication and the grant bring the labels, by the usual upsert.
    summaries = ingest(engine, [FORMATS / "ipa180104.xml", FORMATS / "ipg180102.xml"])
    assert [(s.stored, s.updated) for s in summaries] == [(0, 1), (2, 1)]
    assert labels(engine, "US20180000001") == cpc("B60W", "Y02T") + ipc("B60W")
    assert labels(engine, "US9855000") == cpc("H04L", "G06F", "H04W") + ipc("H04L", "G06F")
    assert patent(engine, "US9855000")[1].startswith("A first node derives a session key")  # type: ignore[index]
    # Reading the unlabelled copy again takes nothing away (a record without labels carries no
    # scheme) and, being what that source said last time, changes nothing at all.
    (again,) = ingest(engine, [early])
    assert (again.stored, again.updated, again.unchanged) == (0, 0, 1)
    assert labels(engine, "US9855000") == cpc("H04L", "G06F", "H04W") + ipc("H04L", "G06F")

    second = rebuild(engine, "CPC+IPC")
    assert second.changed
    members = {p for (p,) in query(engine, "SELECT patent_id FROM snapshot_members WHERE snapshot_id = :s",
                                   s=second.snapshot_id)}
    assert {"US20180000001", "US9855000"} <= members and len(members) == 40 + 2 + 2
    status = cli(cli_env, "db", "status")
    assert re.search(r"unlabelled patents: 0$", status.stdout, re.M), status.stdout


@pytest.mark.parametrize("labels_value", [None, []])
def test_a_labelled_patent_keeps_its_labels_when_an_unlabelled_record_comes(engine, tmp_path: Path, labels_value) -> None:  # type: ignore[no-untyped-def]
    ingest(engine, [write_jsonl(tmp_path / "a.jsonl", [{"id": "US7000001", "abstract": "Text.", "labels": ["A01B"]}])])
    record = {"id": "US7000001", "abstract": "Text.", **({"labels": labels_value} if labels_value is not None else {})}
    (summary,) = ingest(engine, [write_jsonl(tmp_path / "b.jsonl", [record])])
    # A new source with the same text and no labels: nothing about the patent changes.
    assert (summary.stored, summary.updated, summary.unchanged, summary.unlabelled) == (0, 0, 1, 1)
    assert labels(engine, "US7000001") == cpc("A01B")
