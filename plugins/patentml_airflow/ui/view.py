"""What the page shows, as plain data: the one-statement read of :mod:`patentml.db.dashboard`, shaped for the
template (champion, best challenger, leaderboard of one snapshot, runs apart, links to DAG runs) and its charts."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from patentml_airflow.ui import charts

#: The DAG whose runs train and promote; a run that does not name its DAG run links to this DAG's page.
RETRAIN_DAG_ID = "patent_retrain"
#: Challengers drawn beside the champion in the learning curves.
CURVES = 3
SECTIONS = tuple("ABCDEFGHY")


def collect(engine: Any, limit: int = 20, snapshot_id: int | None = None) -> dict[str, Any]:
    """Everything the page shows (also served as JSON); every run shows its own score, read in one statement."""
    from patentml import variants
    from patentml.db.dashboard import page_data

    with engine.connect() as conn:
        raw = page_data(conn, snapshot_id=snapshot_id, limit=limit)
    champion = raw["champion"]
    champion_run = champion.get("run_id") if champion else None
    board = [dict(r, champion=r["run_id"] == champion_run, link=run_link(r)) for r in raw["board"]]
    challenger = next((r for r in board if r["run_id"] != champion_run), None)
    sections = _by_run(raw["sections"])
    if champion is not None:
        champion = dict(champion, metrics=_metrics(champion), link=run_link(champion) if champion_run else None)
    counts = raw["counts"]
    return {
        "corpus": {"patents": counts["patents"], "batches": counts["ingest batches"],
                   "rejected": counts["rejected records"], "runs": counts["training runs"]},
        "snapshot_id": raw["snapshot_id"],
        "snapshots": raw["snapshots"],
        "leaderboard": board,
        "unfinished": [dict(r, link=run_link(r)) for r in raw["unfinished"]],
        "champion": champion,
        "challenger": challenger,
        "sections": sections.get(champion_run, []) if champion_run is not None else [],
        "challenger_sections": sections.get(challenger["run_id"], []) if challenger else [],
        "curves": _curves(board, champion, raw["epochs"]),
        "history": raw["promotions"],
        "promotions": raw["promotions"][:limit],
        "batches": raw["batches"],
        "variants": variants.describe(),
    }


def _metrics(champion: dict[str, Any]) -> dict[str, Any] | None:
    """The champion's score (its run's, under the run's rule), or None when its run has none."""
    from patentml.db.results import score_of

    return score_of(champion) if champion.get("f1") is not None else None


def _by_run(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["run_id"], []).append(row)
    return out


def _curves(board: list[dict[str, Any]], champion: dict[str, Any] | None,
            epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The champion's run and the best challengers that logged epochs, each with its epoch rows."""
    per_run = _by_run(epochs)
    champion_run = champion.get("run_id") if champion else None
    runs: list[dict[str, Any]] = []
    if champion is not None and champion_run in per_run:
        runs.append({"run_id": champion_run, "variant": champion.get("variant"), "champion": True})
    challengers = [r for r in board if r["run_id"] != champion_run and r["run_id"] in per_run][:CURVES]
    runs += [{"run_id": r["run_id"], "variant": r["variant"], "champion": False} for r in challengers]
    return [dict(r, epochs=per_run[r["run_id"]]) for r in runs]


def run_link(row: dict[str, Any]) -> dict[str, str]:
    """Where a run leads in the Airflow UI: its DAG run when the row names one, else the retrain DAG's page.

    Links are relative to the page (``/patentml/``), so they hold under a base URL with a path.
    """
    dag_id, dag_run_id = row.get("dag_id"), row.get("dag_run_id")
    if dag_id and dag_run_id:
        href = f"../dags/{quote(str(dag_id), safe='')}/runs/{quote(str(dag_run_id), safe='')}"
        if row.get("task_id"):
            href += f"/tasks/{quote(str(row['task_id']), safe='')}"
        return {"href": href, "title": f"DAG run {dag_run_id} of {dag_id}"}
    return {"href": f"../dags/{RETRAIN_DAG_ID}", "title": f"the {RETRAIN_DAG_ID} DAG (this run names no DAG run)"}


# -- charts ----------------------------------------------------------------------------------------
def _run_name(run: dict[str, Any]) -> str:
    return f"{run['variant']} (run {run['run_id']}{', champion' if run.get('champion') else ''})"


def learning_curves(curves: list[dict[str, Any]]) -> list[Markup]:
    """Training loss and validation F1 per epoch, one line per run (the champion's drawn strong)."""
    out = []
    for key, title, label in (("train_loss", "Training loss per epoch", "training loss"),
                              ("valid_f1", "Validation F1 per epoch", "validation example F1")):
        series = []
        for run in curves:
            pts = [(float(e["epoch"]), float(e[key])) for e in run["epochs"] if _number(e.get(key))]
            series.append(charts.Series(
                _run_name(run), pts, notes=[f"{_run_name(run)}, epoch {int(x)}: {y:.4f}" for x, y in pts],
                emphasis=bool(run["champion"])))
        series = [s for s in series if s.points]
        if not series:
            out.append(charts.empty_chart(title, "no run on this page logged epochs (TF-IDF and kNN runs have none)"))
            continue
        desc = "; ".join(f"{s.name}: {s.points[0][1]:.3f} at epoch {s.points[0][0]:g} to {s.points[-1][1]:.3f} "
                         f"at epoch {s.points[-1][0]:g}" for s in series)
        out.append(charts.line_chart(series, title=title, x_label="epoch", y_label=label, desc=desc,
                                     integer_x=True, y_floor=0.0 if key == "valid_f1" else None,
                                     chart_id=f"curve-{key}"))
    return out


def section_chart(champion: dict[str, Any] | None, champion_rows: list[dict[str, Any]],
                  challenger: dict[str, Any] | None, challenger_rows: list[dict[str, Any]]) -> Markup:
    """Per-section F1 on the test split: the champion's run against the best challenger's."""
    title = "F1 per CPC section (test split)"
    present = {r["section"] for r in champion_rows + challenger_rows}
    categories = [s for s in SECTIONS if s in present] + sorted(present - set(SECTIONS))
    groups, notes = [], []
    for who, run, rows in (("champion", champion, champion_rows), ("best challenger", challenger, challenger_rows)):
        if run is None or not rows:
            continue
        by = {r["section"]: r for r in rows}
        name = f"{who}: {run['variant']} (run {run['run_id']})"
        groups.append((name, [by[c]["f1"] if c in by else None for c in categories]))
        notes.append([f"{name}, section {c}: F1 {by[c]['f1']:.3f} on {by[c]['n_patents']:,} patents"
                      if c in by else "" for c in categories])
    if not groups:
        return charts.empty_chart(title, "no section scores yet")
    desc = "; ".join(f"{name}: " + ", ".join(f"{c} {v:.2f}" for c, v in zip(categories, vals) if v is not None)
                     for name, vals in groups)
    return charts.bar_chart(categories, groups, title=title, x_label="CPC section", y_label="example F1",
                            desc=desc, notes=notes, chart_id="sections-chart")


def champion_history(promotions: list[dict[str, Any]]) -> Markup:
    """The champion's score after each decision (a promotion: the new champion's; a keep: the kept one's)."""
    from patentml.promote.decide import metric_label

    title = "The champion's score over time"
    rows = [p for p in reversed(promotions) if isinstance(p.get("decided_at"), dt.datetime)]
    pts, notes, hollow = [], [], set()
    for p in rows:
        score = p["challenger_score"] if p["promoted"] else p["champion_score"]
        if not _number(score) or not p.get("champion_after"):
            continue
        if not p["promoted"]:
            hollow.add(len(pts))
        pts.append((p["decided_at"].timestamp(), float(score)))
        notes.append(f"{p['decided_at']:%Y-%m-%d %H:%M} {p['action']}: {p['champion_after']} "
                     f"{p['metric']} {float(score):.4f}")
    if not pts:
        return charts.empty_chart(title, "no promotion decisions yet")
    lo, hi = pts[0][0], pts[-1][0]
    if hi - lo < 3600:
        lo, hi = lo - 1800, hi + 1800
    series = charts.Series("champion (filled: promoted, hollow: kept)", pts, notes=notes, hollow=frozenset(hollow))
    metrics = sorted({metric_label(p["metric"]) for p in rows})
    desc = (f"{len(pts)} decisions from {notes[0]} to {notes[-1]}; the score holds between decisions")
    return charts.line_chart([series], title=title, x_label="decided (UTC)", y_label=" / ".join(metrics) or "score",
                             desc=desc, x_ticks=charts.time_ticks(lo, hi), x_format=charts.time_label(hi - lo),
                             step=True, chart_id="history-chart")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def chart_set(data: dict[str, Any]) -> dict[str, Any]:
    """Every chart of the page, as Markup for the template."""
    return {"curves": learning_curves(data["curves"]),
            "sections": section_chart(data["champion"], data["sections"], data["challenger"],
                                      data["challenger_sections"]),
            "history": champion_history(data["history"])}


__all__ = ["RETRAIN_DAG_ID", "chart_set", "collect", "run_link"]
