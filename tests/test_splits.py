"""Splits: stable hash membership, subset sampling, label space from train, counts in Postgres, reuse."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from patentml.ingest import ingest
from patentml.splits import id_hash, iter_split, label_space, rebuild, split_of
from tests.toy import toy_records, write_toy_jsonl


@pytest.fixture(scope="module")
def corpus(engine, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("toy")
    ingest(engine, [str(write_toy_jsonl(folder / "toy.jsonl", n=300))])
    return folder


def test_split_of_is_a_pure_function_of_the_id() -> None:
    # Worked example: md5("US9000000")[:8] as a fraction of 2**32 decides the side on its own.
    import hashlib

    h = int(hashlib.md5(b"US9000000").hexdigest()[:8], 16) / 2**32
    assert id_hash("US9000000") == h
    expected = "test" if h < 0.2 else "valid" if h < 0.3 else "train"
    assert split_of("US9000000") == expected
    shares = [split_of(f"US{i}") for i in range(20000)]
    assert abs(shares.count("test") / 20000 - 0.2) < 0.01
    assert abs(shares.count("valid") / 20000 - 0.1) < 0.01


def test_rebuild_matches_python_hash_and_stores_counts(engine, corpus) -> None:
    info = rebuild(engine, "CPC")
    assert info.changed
    with engine.connect() as conn:
        members = conn.execute(
            text("SELECT patent_id, split, in_subset, labels FROM snapshot_members WHERE snapshot_id = :s"),
            {"s": info.snapshot_id},
        ).all()
    assert len(members) == 300
    for pid, split, in_subset, labels in members:
        assert split == split_of(pid)
        assert in_subset == (id_hash(pid, "subset:") < 0.15)
    stats = {(s["dataset"], s["split"]): s for s in info.stats}
    n_test = sum(1 for m in members if m[1] == "test")
    assert stats[("full", "test")]["n_patents"] == n_test
    train_labels = {l for m in members if m[1] == "train" for l in m[3]}
    assert label_space(engine, info.snapshot_id, "full") == sorted(train_labels)
    # labels per patent worked out from the generator: every 4th record has two labels
    recs = {r["id"]: r for r in toy_records(300)}
    test_ids = [m[0] for m in members if m[1] == "test"]
    expected_lpp = sum(len(recs[i]["labels"]) for i in test_ids) / len(test_ids)
    assert stats[("full", "test")]["labels_per_patent"] == pytest.approx(expected_lpp)


def test_unchanged_corpus_reuses_snapshot_and_growth_keeps_sides(engine, corpus, tmp_path) -> None:
    first = rebuild(engine, "CPC")
    again = rebuild(engine, "CPC")
    assert not again.changed and again.snapshot_id == first.snapshot_id
    extra = tmp_path / "more.jsonl"
    extra.write_text(json.dumps({"id": "US123", "abstract": "a gear shaft", "labels": ["F16H"]}) + "\n")
    ingest(engine, [str(extra)])
    grown = rebuild(engine, "CPC")
    assert grown.changed and grown.snapshot_id != first.snapshot_id
    with engine.connect() as conn:
        moved = conn.execute(
            text(
                "SELECT count(*) FROM snapshot_members a JOIN snapshot_members b USING (patent_id) "
                "WHERE a.snapshot_id = :a AND b.snapshot_id = :b AND a.split <> b.split"
            ),
            {"a": first.snapshot_id, "b": grown.snapshot_id},
        ).scalar()
    assert moved == 0


def test_iter_split_streams_the_split(engine, corpus) -> None:
    info = rebuild(engine, "CPC")
    rows = list(iter_split(engine, info.snapshot_id, "full", "valid"))
    valid = {s["dataset"]: s for s in info.stats if s["split"] == "valid"}["full"]["n_patents"]
    assert len(rows) == valid
    assert all(split_of(pid) == "valid" and labels for pid, _, labels in rows)
