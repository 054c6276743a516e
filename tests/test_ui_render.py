"""The UI page's pure parts: SVG charts (ticks, points, bars, escaping, empty states), explanations of any shape
rendered readably and escaped, and the links from runs to their Airflow DAG runs."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tests import airflow_env  # noqa: F401  (configures Airflow before the plugin is imported)

EVIL = '<script>alert("x")</script>'


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    from patentml_airflow.ui.charts import nice_ticks

    assert nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0.31, 0.58) == [0.3, 0.4, 0.5, 0.6]
    assert nice_ticks(1, 4, integer=True) == [1.0, 2.0, 3.0, 4.0]
    assert nice_ticks(1, 20, integer=True) == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert nice_ticks(0.5, 0.5) == [0.45, 0.5, 0.55]  # one value: a small range around it


def test_line_chart_draws_every_point_on_its_axis_and_escapes() -> None:
    from patentml_airflow.ui.charts import Series, line_chart

    a = Series("run 1 " + EVIL, [(1, 0.2), (2, 0.4), (3, 0.5)], notes=["a1", "a2", "a3"], emphasis=True)
    b = Series("run 2", [(1, 0.1), (2, float("nan")), (3, 0.3)], hollow=frozenset({0}))
    svg = str(line_chart([a, b], title="Validation F1", x_label="epoch", y_label="F1", integer_x=True,
                         y_floor=0.0, chart_id="t"))
    assert svg.count("<circle") == 5 and svg.count('class="hollow"') == 1  # the NaN is skipped
    assert 'role="img"' in svg and 'aria-labelledby="t-t t-d"' in svg and "<title id=\"t-t\">Validation F1" in svg
    assert EVIL not in svg and "&lt;script&gt;" in svg
    assert "<title>a2</title>" in svg and "series s0 strong" in svg and "series s1" in svg
    # y axis from the floor 0 to the round tick above 0.5: 0, 0.2, 0.4, 0.6; a point at y sits y/0.6 up the plot
    assert re.findall(r'text-anchor="end">([\d.]+)</text>', svg) == ["0", "0.2", "0.4", "0.6"]
    ys = [float(m) for m in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)]
    top, bottom = 12, 250 - 42
    assert ys[:3] == pytest.approx([bottom - y / 0.6 * (bottom - top) for y in (0.2, 0.4, 0.5)], abs=0.06)
    # x ticks are the epochs
    assert [t for t in re.findall(r'text-anchor="middle">(\d+)</text>', svg)] == ["1", "2", "3"]


def test_step_chart_over_time_and_empty_charts() -> None:
    from patentml_airflow.ui.charts import Series, line_chart, time_label, time_ticks

    t0 = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc).timestamp()
    pts = [(t0, 0.5), (t0 + 86400, 0.55), (t0 + 5 * 86400, 0.6)]
    svg = str(line_chart([Series("champion", pts)], title="t", x_label="day", y_label="F1", step=True,
                         x_ticks=time_ticks(pts[0][0], pts[-1][0]), x_format=time_label(5 * 86400)))
    path = re.search(r'<path d="([^"]+)"', svg).group(1)
    assert path.startswith("M") and path.count("H") == 2 and path.count("V") == 2 and "L" not in path
    assert ">2026-01-05<" in svg and ">2026-01-10<" in svg
    empty = str(line_chart([Series("x", [])], title="Nothing " + EVIL, x_label="", y_label=""))
    assert "no data yet" in empty and EVIL not in empty and "<svg" not in empty


def test_bar_chart_one_bar_per_value_from_zero() -> None:
    from patentml_airflow.ui.charts import bar_chart

    svg = str(bar_chart(["A", "H", "Y"], [("champion", [0.6, 0.5, None]), ("challenger", [0.4, 0.7, 0.2])],
                        title="F1 per section", x_label="section", y_label="F1"))
    heights = [float(h) for h in re.findall(r'height="([\d.]+)"><title>', svg)]
    assert len(heights) == 5  # the missing value draws no bar
    assert heights[2] / heights[0] == pytest.approx(0.5 / 0.6, rel=1e-3)  # champion H / champion A
    assert "<title>challenger, Y: 0.2</title>" in svg and ">Y</text>" in svg


def test_explanations_of_any_shape_are_readable_and_escaped() -> None:
    from patentml_airflow.ui.suggest import MAX_ITEMS, render_explanation

    knn = {"neighbours": [{"id": "US8000001", "similarity": 0.91234, "labels": ["H04L", "G06F"]},
                          {"id": "US8000002 " + EVIL, "similarity": 0.8, "labels": ["H04L"]}]}
    html = str(render_explanation(knn))
    assert "<dt>neighbours</dt>" in html and "<th>similarity</th>" in html and "<td>0.912</td>" in html
    assert "<td>H04L, G06F</td>" in html and EVIL not in html and "&lt;script&gt;" in html
    words = str(render_explanation({"words": [["packet", 0.31], ["router", 0.2]]}))
    assert words.count('class="chip"') == 2 and "packet <small>0.310</small>" in words
    as_dicts = str(render_explanation([{"ngram": "packet router", "weight": 1.5}]))
    assert 'class="chip"' in as_dicts and "packet router <small>1.500</small>" in as_dicts
    blend = {"members": [{"variant": "embed-knn-full", "weight": 0.6, "explanation": knn}]}
    assert "<th>explanation</th>" in str(render_explanation(blend)) and "US8000001" in str(render_explanation(blend))
    long = str(render_explanation([[f"w{i}", 1.0] for i in range(MAX_ITEMS + 3)]))
    assert long.count('class="chip"') == MAX_ITEMS and "… 3 more" in long
    deep: dict = {"x": 1}
    for _ in range(8):
        deep = {"d": deep}
    assert "<code>" in str(render_explanation(deep)) and str(render_explanation(None)) == "–"


def test_runs_link_to_their_dag_run_or_to_the_dag() -> None:
    from patentml_airflow.ui.view import RETRAIN_DAG_ID, run_link

    link = run_link({"dag_id": "patent_retrain", "dag_run_id": "manual__2026-01-05T02:00:00+00:00",
                     "task_id": "train"})
    assert link["href"] == "../dags/patent_retrain/runs/manual__2026-01-05T02%3A00%3A00%2B00%3A00/tasks/train"
    assert run_link({"dag_id": "patent_retrain", "dag_run_id": "x/../y"})["href"] == "../dags/patent_retrain/runs/x%2F..%2Fy"
    assert run_link({"run_id": 3})["href"] == f"../dags/{RETRAIN_DAG_ID}"
