"""Every ```sql block in docs/sql.md runs against the migrated schema and returns rows.

The database holds a little of everything (an ingested corpus with rejects, a snapshot, runs with
metrics and predictions, models and promotions), so a query with a wrong filter or join, not just
a wrong column, fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import FIXTURES, REPO

DOC = REPO / "docs" / "sql.md"


def sql_blocks(path: Path = DOC) -> list[tuple[str, str]]:
    """``(heading, sql)`` for each ```sql block, with the ``###`` heading it sits under."""
    blocks, heading = [], ""
    for match in re.finditer(r"^(#{2,3} [^\n]*)$|^```sql\n(.*?)^```", path.read_text(), re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks.append((heading, match.group(2)))
    return blocks


def _seed(engine) -> None:  # type: ignore[no-untyped-def]
    from patentml.ingest import ingest

    ingest(
        engine,
        [FIXTURES / "ingest" / "ipg180102.xml", FIXTURES / "ingest" / "2015_USPTO.json",
         FIXTURES / "ingest_db" / "bad.jsonl"],
    )
    with engine.begin() as conn:
        patents = [p for (p,) in conn.execute(text("SELECT patent_id FROM patents ORDER BY 1"))]
        snap = conn.execute(
            text("INSERT INTO dataset_snapshots (label_scheme, fingerprint, params) "
                 "VALUES ('CPC', 'f', '{}') RETURNING snapshot_id")
        ).scalar_one()
        for i, pid in enumerate(patents):
            labels = [l for (l,) in conn.execute(
                text("SELECT subclass FROM patent_labels WHERE patent_id = :p AND scheme = 'CPC' ORDER BY position"),
                {"p": pid},
            )] or ["A01H"]
            conn.execute(
                text("INSERT INTO snapshot_members VALUES (:s, :p, :split, true, 'CPC', :l)"),
                {"s": snap, "p": pid, "split": "test" if i % 2 else "train", "l": labels},
            )
        for dataset in ("full", "subset"):
            for split in ("train", "valid", "test"):
                conn.execute(
                    text("INSERT INTO snapshot_stats VALUES (:s, :d, :sp, 4, 6, 1.5, 0, 0)"),
                    {"s": snap, "d": dataset, "sp": split},
                )
            for index, label in enumerate(("A01H", "G06F", "H04L")):
                conn.execute(text("INSERT INTO snapshot_labels VALUES (:s, :d, :i, :l, 3)"),
                             {"s": snap, "d": dataset, "i": index, "l": label})

        runs = {}
        for variant, f1 in (("glove-wbce-full", 0.41), ("tfidf-full", 0.52), ("glove-wbce-full", 0.47)):
            encoder, *rest = variant.split("-")
            run_id = conn.execute(
                text("INSERT INTO runs (variant, encoder, loss, dataset, snapshot_id, status, settings, seed, "
                     "epochs_done, best_epoch, finished_at, train_seconds, rule) "
                     "VALUES (:v, :e, :l, 'full', :s, 'succeeded', '{}', 0, 2, 2, now(), 12.5, 'tuned') RETURNING run_id"),
                {"v": variant, "e": encoder, "l": rest[0] if len(rest) > 1 else None, "s": snap},
            ).scalar_one()
            runs[run_id] = f1
            for epoch in (1, 2):
                conn.execute(text("INSERT INTO run_epochs VALUES (:r, :e, 0.3, 0.35, 0.4, 0.5, 1.5, 100)"),
                             {"r": run_id, "e": epoch})
            for rule, threshold, score in (("t0.5", 0.5, f1 - 0.05), ("tuned", 0.3, f1)):
                conn.execute(
                    text("INSERT INTO run_metrics (run_id, split, rule, threshold, keep_top, precision, recall, f1, "
                         "p_at_1, r_at_1, f1_at_1, p_at_5, r_at_5, f1_at_5, mean_pred_labels, mean_true_labels, "
                         "empty_share, n_patents) VALUES (:r, 'test', :rule, :t, true, :f, :f, :f, 0.6, 0.4, 0.5, "
                         "0.2, 0.7, 0.3, 1.4, 1.6, 0.0, 4)"),
                    {"r": run_id, "rule": rule, "t": threshold, "f": score},
                )
                for section in "ACGH":
                    conn.execute(text("INSERT INTO section_metrics VALUES (:r, 'test', :rule, :sec, 0.5, 0.6, 0.55, 2)"),
                                 {"r": run_id, "rule": rule, "sec": section})
                for label in ("A01H", "G06F", "H04L"):
                    conn.execute(text("INSERT INTO label_metrics VALUES (:r, 'test', :rule, :l, 0.5, 0.5, 0.5, 2, 2)"),
                                 {"r": run_id, "rule": rule, "l": label})
            for pid, truth, pred in (
                (patents[0], ["A01H", "C12N"], ["A01H", "A01G"]),
                (patents[1], ["A01H", "A01G"], ["G06F"]),
                (patents[2], ["H04L"], ["H04L", "A01H"]),
            ):
                conn.execute(
                    text("INSERT INTO predictions VALUES (:r, :p, :t, :pl, CAST(:s AS jsonb))"),
                    {"r": run_id, "p": pid, "t": truth, "pl": pred, "s": json.dumps({l: 0.9 for l in pred})},
                )
        first, *_, last = sorted(runs)
        for model_id, run_id in (("m-1", first), ("m-2", last)):
            conn.execute(
                text("INSERT INTO models (model_id, run_id, variant, snapshot_id, store_uri, manifest_sha256, metrics) "
                     "SELECT :m, run_id, variant, snapshot_id, 'file:///tmp/models', :h, '{}' FROM runs "
                     "WHERE run_id = :r"),
                {"m": model_id, "r": run_id, "h": "0" * 64},
            )
        # m-2's suggestions for three labelled patents (one of them in its test split) and a new, unlabelled
        # filing; m-1 scored the first patent once too.
        conn.execute(text("INSERT INTO patents (patent_id, abstract, source, content_hash) "
                          "VALUES ('US99000001', 'A router forwards packets.', 'jsonl:new.jsonl', 'h')"))
        for model_id, pid, ranked in (
            ("m-2", patents[0], [("A01H", 0.91, True), ("C12N", 0.62, True), ("A01G", 0.2, False)]),
            ("m-2", patents[1], [("G06F", 0.7, True), ("A01H", 0.4, False), ("A01G", 0.3, False)]),
            ("m-2", patents[2], [("H04L", 0.8, True), ("A01H", 0.1, False), ("G06F", 0.05, False)]),
            ("m-2", "US99000001", [("H04L", 0.88, True), ("G06F", 0.3, False), ("H04W", 0.2, False)]),
            ("m-1", patents[0], [("A01G", 0.5, True), ("A01H", 0.45, False), ("C12N", 0.1, False)]),
        ):
            for rank, (label, score, selected) in enumerate(ranked, 1):
                conn.execute(text("INSERT INTO patent_suggestions (patent_id, model_id, rank, subclass, score, selected, "
                                  "created_at) VALUES (:p, :m, :r, :l, :s, :sel, now() - CAST(:age AS interval))"),
                             {"p": pid, "m": model_id, "r": rank, "l": label, "s": score, "sel": selected,
                              "age": "1 hour" if model_id == "m-1" else "0 hours"})
        for action, promoted, before, after, challenger, reason in (
            ("first", True, None, "m-1", "m-1", "no champion yet"),
            ("keep", False, "m-1", "m-1", "m-2", "challenger 0.4700 is not better than champion 0.4800 + 0.005"),
            ("promote", True, "m-1", "m-2", "m-2", "challenger 0.4700 beats champion 0.4100 + 0.005"),
        ):
            conn.execute(
                text("INSERT INTO promotions (action, promoted, challenger_model_id, challenger_run_id, "
                     "champion_before, champion_after, metric, challenger_score, champion_score, margin, "
                     "snapshot_id, store_uri, reason) VALUES (:a, :p, :c, NULL, :b, :af, 'example_f1', 0.47, 0.41, "
                     "0.005, :s, 'file:///tmp/models', :why)"),
                {"a": action, "p": promoted, "c": challenger, "b": before, "af": after, "s": snap, "why": reason},
            )


@pytest.fixture(scope="module")
def seeded(engine):  # type: ignore[no-untyped-def]
    _seed(engine)
    return engine


def run_sql(engine, sql: str) -> tuple[list[str], list[tuple[object, ...]]]:  # type: ignore[no-untyped-def]
    # psycopg2 directly, no bind-parameter parsing: the query runs exactly as a user pastes it into psql.
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(sql)
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
        raw.rollback()
        return columns, rows
    finally:
        raw.close()


BLOCKS = sql_blocks()


def test_the_doc_has_the_promised_examples() -> None:
    headings = {h for h, _ in BLOCKS}
    for wanted in ("Leaderboard", "Champion history", "Per-section scores", "Label co-occurrence",
                   "last ingest batches", "rejected records of a batch", "Patents per label",
                   "Suggestions for one patent", "new filings likely in a subclass", "Agreement of suggestions"):
        assert any(wanted.lower() in h.lower() for h in headings), wanted
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("heading,sql", BLOCKS, ids=[f"{i:02d}-{h[:40]}" for i, (h, _) in enumerate(BLOCKS)])
def test_example_query_runs_and_returns_rows(seeded, heading: str, sql: str) -> None:  # type: ignore[no-untyped-def]
    columns, rows = run_sql(seeded, sql)
    assert columns and rows, f"{heading}: no rows"


def test_examples_answer_what_they_say(seeded) -> None:  # type: ignore[no-untyped-def]
    by_heading = {h: sql for h, sql in BLOCKS}

    def first(prefix: str) -> tuple[list[str], list[tuple[object, ...]]]:
        (sql,) = [s for h, s in BLOCKS if h.startswith(prefix)][:1]
        return run_sql(seeded, sql)

    # The leaderboard has the latest run of each variant (the second glove run, not the first).
    columns, rows = first("Leaderboard")
    board = {row[0]: row[1] for row in rows}
    latest = dict(run_sql(seeded, "SELECT variant, max(run_id) FROM runs GROUP BY variant")[1])
    assert board == latest
    # Champion history: the two decisions that moved the pointer, newest first.
    columns, rows = first("Champion history")
    assert [(r[1], r[3]) for r in rows] == [("promote", "m-2"), ("first", "m-1")]
    # Per-section scores of the best run: one row per section.
    columns, rows = first("Per-section scores")
    assert [r[0] for r in rows] == ["A", "C", "G", "H"]
    # Co-occurrence with A01H: in truth C12N and A01G, predicted with A01H: A01G and H04L.
    columns, rows = first("Label co-occurrence")
    assert {r[0]: (r[1], r[2]) for r in rows} == {"C12N": (1, 0), "A01G": (1, 1), "H04L": (0, 1)}
    # The batches: bad.jsonl is the latest, with its 8 rejected records.
    columns, rows = first("The last ingest batches")
    assert rows[0][3].endswith("bad.jsonl") and rows[0][8] == 8 and rows[0][-1] == 8
    # Suggestions. The unlabelled filing is this week's H04L candidate. Agreement counts m-2's labelled patents
    # outside its training split: only the seeded patents[1] (test side); its P@1 is whether G06F is its label.
    n_patents = run_sql(seeded, "SELECT count(*) FROM patents")[1][0][0]
    columns, rows = first("Suggestions for one patent")
    assert [(r[0], r[1], r[2]) for r in rows] == [("m-2", 1, "A01H"), ("m-2", 2, "C12N"), ("m-2", 3, "A01G"),
                                                  ("m-1", 1, "A01G"), ("m-1", 2, "A01H"), ("m-1", 3, "C12N")]
    columns, rows = first("This week's new filings likely in a subclass")
    assert [r[0] for r in rows] == ["US99000001"]
    columns, rows = first("Agreement of suggestions")
    (second,) = run_sql(seeded, "SELECT patent_id FROM patent_suggestions WHERE model_id = 'm-2' AND subclass = "
                                "'G06F' AND rank = 1")[1][0]
    truth = {l for (l,) in run_sql(seeded, f"SELECT subclass FROM patent_labels WHERE patent_id = '{second}' AND "
                                           "scheme = (SELECT min(scheme) FROM patent_labels WHERE patent_id = "
                                           f"'{second}')")[1]}
    hits = len(truth & {"G06F", "A01H", "A01G"})
    assert rows[0][:3] == ("m-2", 1, float("G06F" in truth)) and float(rows[0][3]) == round(hits / len(truth), 4)
    assert float(rows[0][4]) == round(2 * ("G06F" in truth) / (1 + len(truth)), 4)
    columns, rows = first("Suggestions per model")
    assert [(r[0], r[1], r[-1]) for r in rows] == [("m-2", 4, n_patents - 4), ("m-1", 1, n_patents - 1)]
    columns, rows = first("The rejected records of a batch")
    assert [r[0] for r in rows][:2] == ["line 2", "line 4"] and len(rows) == 9
    assert "Patents per label" in by_heading
