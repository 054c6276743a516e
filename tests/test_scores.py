"""One score of a run: the metrics under the decision rule the run chose on validation, the same in every place
that shows it (promotion, ``patentml report``, ``models list``, the XCom a task hands on, the UI)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import airflow_env  # noqa: F401  (configures Airflow before the plugin is imported)
from tests.toy import write_toy_jsonl


@pytest.fixture(scope="module")
def two_runs(engine: Any, settings: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    from patentml.evaluate import evaluate_run
    from patentml.ingest import ingest
    from patentml.splits import rebuild
    from patentml.train import train

    ingest(engine, [str(write_toy_jsonl(tmp_path_factory.mktemp("toy") / "toy.jsonl", n=300, seed=5))])
    rebuild(engine, settings.label_scheme)
    runs = [train("tfidf-full", settings, overrides={"min_df": 1, "C": 0.3}, engine=engine),
            train("tfidf-svm-full", settings, overrides={"min_df": 1, "C": 0.05}, engine=engine)]
    return {r: evaluate_run(engine, r, settings) for r in runs}


def test_each_run_shows_one_f1_everywhere(two_runs: dict[int, dict[str, Any]], engine: Any, settings: Any) -> None:
    from patentml.promote import list_models, promote
    from patentml.report import leaderboard_markdown
    from patentml_airflow.ui import collect
    from patentml_airflow.xcom import headline

    own = {r: s["rules"][s["rule"]]["f1"] for r, s in two_runs.items()}
    paper = {r: s["rules"]["t0.5"]["f1"] for r, s in two_runs.items()}
    # The test can fail: at least one run chose a rule whose F1 differs from the paper's 0.5 rule.
    assert any(two_runs[r]["rule"] != "t0.5" and abs(own[r] - paper[r]) > 1e-3 for r in two_runs)
    # XCom (and the DAG log line, which prints it)
    assert {r: headline(s)["f1"] for r, s in two_runs.items()} == pytest.approx(own)
    # promotion's candidates and the decision row
    decision = promote(settings, run_ids=list(two_runs), margin=0.0, engine=engine)
    assert {c["run_id"]: c["f1"] for c in decision["candidates"]} == pytest.approx(own)
    assert decision["challenger_score"] == pytest.approx(own[decision["challenger_run_id"]])
    # the leaderboard of `patentml report`
    table = leaderboard_markdown(engine)
    shown = {int(cells[0]): float(cells[5]) / 100 for cells in
             ([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:])}
    assert shown == pytest.approx(own, abs=5e-4)
    # `patentml models list`
    (champion,) = [m for m in list_models(settings, engine=engine) if m["champion"]]
    assert champion["f1"] == pytest.approx(own[decision["challenger_run_id"]])
    # the UI page (and its JSON)
    data = collect(engine)
    assert {r["run_id"]: r["f1"] for r in data["leaderboard"] if r["run_id"] in own} == pytest.approx(own)
    assert data["champion"]["metrics"]["f1"] == pytest.approx(own[decision["challenger_run_id"]])


def test_the_main_job_summary_names_what_happened(two_runs: dict[int, dict[str, Any]], engine: Any,
                                                  settings: Any) -> None:
    import datetime as dt

    from patentml.promote import promote
    from patentml.summary import main_job_summary

    decision = promote(settings, run_ids=list(two_runs), margin=0.0, engine=engine)
    text = main_job_summary(engine, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
    for run_id, summary in two_runs.items():
        f1 = summary["rules"][summary["rule"]]["f1"]
        assert any(line.split()[:3] == [str(run_id), summary["variant"], f"{100 * f1:.1f}"]
                   for line in text.splitlines()), (run_id, text)
    assert f"champion {decision['champion_after']}" in text and decision["reason"] in text
    assert "1 file(s): 300 records read" in text and "patentml db shell" in text and "patentml predict" in text
