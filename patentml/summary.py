"""What a main job did, for a newcomer: ingested, trained, which model won and why, and what to do next."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: Two queries a newcomer can paste into ``patentml db shell`` (both are in docs/sql.md).
EXAMPLE_QUERIES = (
    ("the leaderboard: each run under its own decision rule",
     "SELECT r.run_id, r.variant, round(m.f1::numeric, 3) AS f1, round(m.p_at_1::numeric, 3) AS p_at_1 "
     "FROM runs r JOIN run_metrics m ON m.run_id = r.run_id AND m.rule = r.rule AND m.split = 'test' "
     "ORDER BY m.f1 DESC;"),
    ("the champion's predictions next to the examiners' codes",
     "SELECT patent_id, true_labels, pred_labels FROM predictions WHERE run_id = "
     "(SELECT run_id FROM models m JOIN promotions p ON p.champion_after = m.model_id "
     "ORDER BY p.promotion_id DESC LIMIT 1) LIMIT 10;"),
)


#: The abstract the main job's champion classifies at the end (a real kind of filing, in no split).
EXAMPLE_ABSTRACT = ("A wireless node retransmits data packets over two radio channels when the acknowledgement "
                    "of the first transmission is lost, and selects the channel from the measured interference.")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main_job_summary(engine: "Engine", since: dt.datetime, ui_url: str = "http://127.0.0.1:8080/plugin/patentml",
                     top: int = 6) -> str:
    """The end-of-run summary of everything since ``since`` (batches, runs, the last promotion decision)."""
    from sqlalchemy import text

    from patentml.db import corpus, registry, results

    with engine.connect() as conn:
        batches = [b for b in corpus.recent_batches(conn, 1000) if b["started_at"] and b["started_at"] >= since]
        counts = corpus.counts(conn)
        runs = [r for r in results.run_scores(conn) if r["started_at"] and r["started_at"] >= since]
        failed = conn.execute(text("SELECT variant FROM runs WHERE started_at >= :t AND status <> 'succeeded'"),
                              {"t": since}).scalars().all()
        decisions = registry.promotions(conn, 1)
    lines = ["What this run did", ""]
    read = sum(b["n_read"] or 0 for b in batches)
    stored = sum((b["n_stored"] or 0) + (b["n_updated"] or 0) for b in batches)
    rejected = sum(b["n_rejected"] or 0 for b in batches)
    lines.append(f"  Ingested  {len(batches)} file(s): {read:,} records read, {stored:,} stored or updated, "
                 f"{rejected:,} rejected (reasons in rejected_records). The corpus holds {counts['patents']:,} patents.")
    if runs:
        lines.append(f"  Trained   {len(runs)} model(s) and scored each on the held-out test split "
                     f"({runs[0]['n_patents']:,} patents), under the decision rule it chose on validation:")
        lines.append("")
        lines.append(f"    {'run':>4}  {'variant':<20} {'F1':>5} {'P@1':>5} {'R@5':>5}")
        for r in runs[:top]:
            lines.append(f"    {r['run_id']:>4}  {r['variant']:<20} {_pct(r['f1']):>5} {_pct(r['p_at_1']):>5} "
                         f"{_pct(r['r_at_5']):>5}")
        lines.append("")
        lines.append("    F1: example-based F1, the paper's headline (share of right codes per patent, averaged);")
        lines.append("    P@1: the top suggestion is right; R@5: share of the true codes among the top five.")
    if failed:
        lines.append(f"  Failed    {', '.join(failed)} (the error is in runs.error and the task log)")
    if decisions:
        d = decisions[0]
        verb = "Promoted" if d["promoted"] else "Kept"
        lines.append(f"  {verb:<9} champion {d['champion_after'] or '(none)'}: {d['reason']}")
    lines += ["", "Next", "",
              f"  Predict:  echo '{EXAMPLE_ABSTRACT[:56]} ...' | .venv/bin/patentml predict -",
              "  Query:    .venv/bin/patentml db shell     (psql on the results), then for example"]
    for title, sql in EXAMPLE_QUERIES:
        lines.append(f"              -- {title}")
        lines.append(f"              {sql}")
    lines += [f"  UI:       make airflow, then {ui_url}", "  More:     docs/sql.md (tables and queries), docs/results.md"]
    return "\n".join(lines)
