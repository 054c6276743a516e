"""``patentml score`` on a real Postgres with a tiny trained champion in a file:// store: the table is filled
with what ``predict`` says, the analyst SQL of docs/sql.md gives predict's P@1, R@5 and example F1, re-running
adds nothing, a crash leaves whole batches, ``--all`` replaces, a new champion scores again, and the export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from patentml.exceptions import DataError
from patentml.predict import Predictor
from patentml.promote import promote
from patentml.settings import Settings
from patentml.suggest import score_patents
from tests.test_promote import champion, clone_run, trained  # noqa: F401 (fixtures)
from tests.test_sql_docs import BLOCKS, run_sql


def _cli(settings: Settings, *args: str) -> list[str]:
    return ["--database-url", settings.database_url or "", "--home", str(settings.home),
            "--store-uri", settings.store_uri or "", *args]


def _rows(engine: Any, model_id: str) -> dict[str, list[tuple[int, str, float, bool]]]:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT patent_id, rank, subclass, score, selected FROM patent_suggestions "
                                  "WHERE model_id = :m ORDER BY patent_id, rank"), {"m": model_id})
        out: dict[str, list[tuple[int, str, float, bool]]] = {}
        for pid, rank, subclass, score, selected in found:
            out.setdefault(pid, []).append((rank, subclass, score, selected))
    return out


def _stamp(engine: Any, model_id: str) -> tuple[int, Any]:
    with engine.connect() as conn:
        return tuple(conn.execute(text("SELECT count(*), max(created_at) FROM patent_suggestions WHERE model_id = :m"),
                                  {"m": model_id}).one())  # type: ignore[return-value]


def _patents(engine: Any) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT patent_id, abstract FROM patents ORDER BY 1"))]


def _agreement(engine: Any) -> tuple[Any, ...]:
    (sql,) = [s for h, s in BLOCKS if h.startswith("Agreement of suggestions")]
    columns, rows = run_sql(engine, sql)
    assert columns == ["model_id", "patents", "p_at_1", "r_at_5", "example_f1"]
    return rows[0]


def _predict_file(settings: Settings, engine: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                  *extra: str) -> dict[str, dict[str, Any]]:
    from patentml.cli import main

    path = tmp_path / "patents.jsonl"
    path.write_text("".join(json.dumps({"id": pid, "abstract": a}) + "\n" for pid, a in _patents(engine)))
    capsys.readouterr()
    assert main(_cli(settings, "predict", str(path), "--top-k", "5", "--progress", "off", *extra)) == 0
    return {o["id"]: o for o in map(json.loads, capsys.readouterr().out.splitlines())}


def test_score_fills_the_table_with_what_predict_says(champion: str, trained: dict[str, Any], engine: Any,
                                                       settings: Settings, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from patentml.cli import main

    assert main(_cli(settings, "score", "--quiet")) == 0
    assert f"{champion}: scored 200 patents" in capsys.readouterr().out
    stored = _rows(engine, champion)
    predicted = _predict_file(settings, engine, tmp_path, capsys)
    assert set(stored) == set(predicted) and len(stored) == 200
    for pid, rows in stored.items():
        top = [(subclass, score) for rank, subclass, score, _ in rows if rank <= 5]
        assert [r[0] for r in rows][:5] == [1, 2, 3, 4, 5]
        assert top == list(predicted[pid]["scores"].items()), pid  # same labels, same order, same scores
        assert [subclass for _, subclass, _, selected in rows if selected] == predicted[pid]["labels"], pid

    # The analyst SQL, on the patents the model did not learn from (its test split), against predict's output.
    with engine.connect() as conn:
        snapshot = conn.execute(text("SELECT snapshot_id FROM runs WHERE run_id = :r"), {"r": trained["tfidf"]}).scalar()
        test_ids = set(conn.execute(text("SELECT patent_id FROM snapshot_members WHERE snapshot_id = :s AND "
                                         "split = 'test'"), {"s": snapshot}).scalars())
        truth: dict[str, set[str]] = {}
        for pid, label in conn.execute(text("SELECT patent_id, subclass FROM patent_labels WHERE scheme = 'CPC'")):
            truth.setdefault(pid, set()).add(label)
        run = conn.execute(text("SELECT m.f1, m.p_at_1, m.r_at_5 FROM run_metrics m JOIN runs r USING (run_id) "
                                "WHERE run_id = :r AND m.split = 'test' AND m.rule = r.rule"),
                           {"r": trained["tfidf"]}).one()
    p1 = [list(predicted[p]["scores"])[0] in truth[p] for p in test_ids]
    r5 = [len(set(list(predicted[p]["scores"])[:5]) & truth[p]) / len(truth[p]) for p in test_ids]
    f1 = [2 * len(set(predicted[p]["labels"]) & truth[p]) / (len(predicted[p]["labels"]) + len(truth[p]))
          for p in test_ids]
    expected = [round(sum(v) / len(v), 4) for v in (p1, r5, f1)]
    model_id, n, *metrics = _agreement(engine)
    assert (model_id, n) == (champion, len(test_ids)) and 20 <= n < 80
    assert [float(m) for m in metrics] == expected
    assert expected == [round(v, 4) for v in (run.p_at_1, run.r_at_5, run.f1)]  # and the run's own evaluation


def test_running_again_adds_nothing(champion: str, engine: Any, settings: Settings,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from patentml.cli import main

    before = _stamp(engine, champion)
    assert before[0] > 0
    assert main(_cli(settings, "score", "--quiet")) == 0
    out = capsys.readouterr().out
    assert "scored 0 patents" in out and "200 already had suggestions from it" in out
    assert _stamp(engine, champion) == before


def test_a_crash_leaves_whole_batches_and_the_next_run_finishes(trained: dict[str, Any], engine: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = Predictor(trained["artifacts"]["glove"], model_id="glove-crash-test")
    real, calls = predictor.scores, []

    def failing(texts: Any, batch_size: Any = None) -> Any:
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("the model fell over")
        return real(texts, batch_size)

    monkeypatch.setattr(predictor, "scores", failing)
    with pytest.raises(RuntimeError, match="fell over"):
        score_patents(predictor, engine, commit_every=64, top_k=4)
    partial = _rows(engine, "glove-crash-test")
    assert len(partial) == 128  # two whole batches; the third wrote nothing
    assert all([r[0] for r in rows][:4] == [1, 2, 3, 4] for rows in partial.values())
    monkeypatch.setattr(predictor, "scores", real)
    summary = score_patents(predictor, engine, commit_every=64, top_k=4)
    assert (summary.scored, summary.already) == (72, 128)
    done = _rows(engine, "glove-crash-test")
    assert len(done) == 200 and all(done[p] == partial[p] for p in partial)


def test_score_waits_for_no_one_else_on_the_same_model(champion: str, engine: Any, settings: Settings) -> None:
    from patentml.db import suggestions

    with engine.connect() as holder:
        assert suggestions.try_lock(holder, champion)
        with Predictor.open(settings) as predictor:
            with pytest.raises(DataError, match="another `patentml score` is writing suggestions of"):
                score_patents(predictor, engine)
        holder.rollback()


def test_all_rescores_and_replaces(champion: str, engine: Any, settings: Settings,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from patentml.cli import main

    count, last = _stamp(engine, champion)
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    assert main(_cli(settings, "score", "--all", "--since", tomorrow, "--quiet")) == 0
    assert "rescored 0 patents" in capsys.readouterr().out and _stamp(engine, champion) == (count, last)

    assert main(_cli(settings, "score", "--all", "--top-k", "3", "--quiet")) == 0
    assert "rescored 200 patents" in capsys.readouterr().out
    rows = _rows(engine, champion)
    assert len(rows) == 200
    assert all([r[0] for r in ranked][:3] == [1, 2, 3] and all(r[3] for r in ranked[3:]) for ranked in rows.values())
    with engine.connect() as conn:
        assert conn.execute(text("SELECT min(created_at) FROM patent_suggestions WHERE model_id = :m"),
                            {"m": champion}).scalar() > last


def test_a_new_champion_scores_again_and_the_export(trained: dict[str, Any], champion: str, engine: Any,
                                                    settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from patentml.cli import main

    better = clone_run(engine, trained["glove"], f1=1.0, p_at_1=1.0)  # the tiny TF-IDF scores F1 0.99
    decision = promote(settings, [better], margin=0.0, engine=engine)
    new = decision["champion_after"]
    assert new != champion and new.startswith("glove-wbce-full-r"), decision["reason"]
    kept = _rows(engine, champion)
    assert main(_cli(settings, "score", "--quiet")) == 0
    assert f"{new}: scored 200 patents" in capsys.readouterr().out
    assert len(_rows(engine, new)) == 200 and _rows(engine, champion) == kept
    assert _agreement(engine)[0] == new  # the queries follow the latest scoring model

    capsys.readouterr()
    assert main(_cli(settings, "suggestions", "--selected", "--format", "csv")) == 0
    exported = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(exported[0]) == ["patent_id", "model_id", "rank", "subclass", "score", "selected", "created_at"]
    expected = [(pid, str(rank), subclass) for pid, rows in _rows(engine, new).items()
                for rank, subclass, _, selected in rows if selected]
    assert [(r["patent_id"], r["rank"], r["subclass"]) for r in exported] == expected
    assert {r["model_id"] for r in exported} == {new} and {r["selected"] for r in exported} == {"true"}
