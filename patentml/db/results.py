"""SQL of the evaluation tables (``run_metrics``, ``section_metrics``, ``label_metrics``, ``predictions``) and
:func:`run_scores`, the one query that says how good a run is: its metrics under its own decision rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from sqlalchemy import and_, any_, delete, func, insert, literal, not_, select

from sqlalchemy.dialects.postgresql import distinct_on

from patentml.db.models import LabelMetric, Prediction, Run, RunMetric, SectionMetric

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

RUNS = Run.__table__
RUN_METRICS = RunMetric.__table__
SECTIONS = SectionMetric.__table__
LABELS = LabelMetric.__table__
PREDICTIONS = Prediction.__table__
#: The columns a run's score carries (``run_metrics`` under the run's own rule).
SCORE_COLUMNS = ("rule", "threshold", "keep_top", "top_ratio", "precision", "recall", "f1", "p_at_1", "r_at_5", "f1_at_5",
                 "empty_share", "mean_pred_labels", "n_patents", "n_unseen_labels", "predict_seconds")
RUN_COLUMNS = ("run_id", "variant", "encoder", "loss", "dataset", "snapshot_id", "status", "artifact_dir",
               "train_seconds", "epochs_done", "n_params", "started_at", "finished_at", "device", "host")


def replace_evaluation(conn: "Connection", run_id: int, split: str, measured: Sequence[tuple[Any, dict[str, Any]]],
                       n_unseen: int, predict_seconds: float, predictions: Iterable[dict[str, Any]]) -> None:
    """Store an evaluation in place of the run's earlier one on ``split``: metrics per rule, predictions.

    ``measured`` holds (DecisionRule, patentml.metrics.evaluate_scores result) pairs; ``predictions``
    dicts with ``patent_id``, ``true_labels``, ``pred_labels``, ``top_scores``.
    """
    for table in (RUN_METRICS, SECTIONS, LABELS):
        conn.execute(delete(table).where(table.c.run_id == run_id, table.c.split == split))
    conn.execute(delete(PREDICTIONS).where(PREDICTIONS.c.run_id == run_id))
    for rule, m in measured:
        k, key = m["at_k"], {"run_id": run_id, "split": split, "rule": rule.name}
        conn.execute(insert(RUN_METRICS).values(
            **key, threshold=rule.threshold, keep_top=rule.keep_top, top_ratio=rule.top_ratio, precision=m["example"]["precision"],
            recall=m["example"]["recall"], f1=m["example"]["f1"], p_at_1=k["p@1"], r_at_1=k["r@1"],
            f1_at_1=k["f1@1"], p_at_5=k["p@5"], r_at_5=k["r@5"], f1_at_5=k["f1@5"],
            mean_pred_labels=m["mean_pred_labels"], mean_true_labels=m["mean_true_labels"],
            empty_share=m["empty_share"], n_patents=m["n_patents"], n_unseen_labels=n_unseen,
            predict_seconds=predict_seconds))
        conn.execute(insert(SECTIONS), [{**key, "section": sec, "precision": v["precision"], "recall": v["recall"],
                                         "f1": v["f1"], "n_patents": v["n_patents"]}
                                        for sec, v in m["sections"].items()])
        conn.execute(insert(LABELS), [{**key, "subclass": lab, "precision": v["precision"], "recall": v["recall"],
                                       "f1": v["f1"], "support": v["support"], "n_predicted": v["n_predicted"]}
                                      for lab, v in m["labels"].items()])
    rows = [{"run_id": run_id, **p} for p in predictions]
    if rows:
        conn.execute(insert(PREDICTIONS), rows)


def run_scores(conn: "Connection", run_ids: Sequence[int] | None = None, *, snapshot_id: int | None = None,
               dataset: str | None = None, split: str = "test", latest_per_variant: bool = False,
               limit: int | None = None, rule: str | None = None) -> list[dict[str, Any]]:
    """Each run's score: its ``run_metrics`` row on ``split`` under the rule the run chose (``runs.rule``).

    The leaderboard, promotion, ``patentml report``, ``models list``, XCom and the UI all read this,
    so a run shows one F1 everywhere. Rows are best first (F1, then P@1, then the older run).
    ``rule`` reads another rule's rows instead (the paper's ``t0.5`` beside ours in report Table 1).
    """
    m = RUN_METRICS
    chosen = RUNS.c.rule if rule is None else rule
    cols = [RUNS.c[c] for c in RUN_COLUMNS] + [m.c[c] for c in SCORE_COLUMNS]
    query = (select(*cols).select_from(RUNS.join(m, and_(m.c.run_id == RUNS.c.run_id, m.c.rule == chosen,
                                                          m.c.split == split)))
             .where(RUNS.c.status == "succeeded"))
    if run_ids is not None:
        query = query.where(RUNS.c.run_id.in_(list(run_ids)))
    if snapshot_id is not None:
        query = query.where(RUNS.c.snapshot_id == snapshot_id)
    if dataset is not None:
        query = query.where(RUNS.c.dataset == dataset)
    if latest_per_variant:
        query = query.order_by(RUNS.c.variant, RUNS.c.run_id.desc()).ext(distinct_on(RUNS.c.variant))
    rows = [dict(r._mapping) for r in conn.execute(query)]
    rows.sort(key=rank_key)
    return rows[:limit] if limit is not None else rows


def rank_key(row: dict[str, Any]) -> tuple[float, float, int]:
    """Best run first: higher F1, then higher P@1, then the older run (the order of every leaderboard)."""
    return (-row["f1"], -row["p_at_1"], row["run_id"])


def rank_order(columns: Any) -> tuple[Any, ...]:
    """:func:`rank_key` as SQL ``ORDER BY`` terms on a selectable's columns (``f1``, ``p_at_1``, ``run_id``)."""
    return (columns.f1.desc(), columns.p_at_1.desc(), columns.run_id)


def own_rule(table: Any, split: str = "test") -> Any:
    """The join of ``runs`` to a run's rows of ``table`` (``run_metrics``, ``section_metrics``, an alias of
    one) on ``split`` under the rule the run chose: how every score of a run is read."""
    return and_(table.c.run_id == RUNS.c.run_id, table.c.rule == RUNS.c.rule, table.c.split == split)


def score_of(row: dict[str, Any]) -> dict[str, Any]:
    """Just the score columns of a :func:`run_scores` row (what a promotion records for a model)."""
    return {k: row[k] for k in SCORE_COLUMNS}


def recent_runs(conn: "Connection", limit: int = 20, split: str = "test") -> list[dict[str, Any]]:
    """The latest runs whatever their status, newest first, each with its score when it has one."""
    m = RUN_METRICS
    seconds = func.coalesce(RUNS.c.train_seconds, func.extract("epoch", RUNS.c.finished_at - RUNS.c.started_at))
    query = (select(*[RUNS.c[c] for c in RUN_COLUMNS], RUNS.c.error, seconds.label("seconds"),
                    *[m.c[c] for c in SCORE_COLUMNS if c not in ("predict_seconds",)])
             .select_from(RUNS.outerjoin(m, own_rule(m, split)))
             .order_by(RUNS.c.started_at.desc(), RUNS.c.run_id.desc()).limit(limit))
    return [dict(r._mapping) for r in conn.execute(query)]


def section_scores(conn: "Connection", run_id: int, split: str = "test") -> list[dict[str, Any]]:
    """Per CPC section, under the run's own rule."""
    s = SECTIONS
    query = (select(s.c.section, s.c.precision, s.c.recall, s.c.f1, s.c.n_patents)
             .select_from(s.join(RUNS, and_(RUNS.c.run_id == s.c.run_id, RUNS.c.rule == s.c.rule)))
             .where(s.c.run_id == run_id, s.c.split == split).order_by(s.c.section))
    return [dict(r._mapping) for r in conn.execute(query)]


def stored_predictions(conn: "Connection", run_id: int) -> list[Any]:
    p = PREDICTIONS
    return list(conn.execute(select(p.c.patent_id, p.c.true_labels, p.c.pred_labels, p.c.top_scores)
                             .where(p.c.run_id == run_id)))


#: Paper Table 4's groups: which stored predictions count, and which label list is counted.
COOCCURRENCE_GROUPS = ("truth", "predicted", "correct", "incorrect", "missed")


def cooccurring(conn: "Connection", run_id: int, label: str, group: str, top: int = 10) -> list[tuple[str, int]]:
    """Labels counted with ``label`` over a run's stored test predictions (paper Table 4), most frequent first.

    ``truth``: true labels of patents that have ``label``; ``predicted``: predicted labels where it was
    predicted; ``correct``/``incorrect``: predicted labels where it was predicted rightly/wrongly;
    ``missed``: predicted labels where it was true but not predicted.
    """
    p = PREDICTIONS
    has_true, has_pred = literal(label) == any_(p.c.true_labels), literal(label) == any_(p.c.pred_labels)
    where = {"truth": [has_true], "predicted": [has_pred], "correct": [has_pred, has_true],
             "incorrect": [has_pred, not_(has_true)], "missed": [has_true, not_(has_pred)]}[group]
    counted = p.c.true_labels if group == "truth" else p.c.pred_labels
    inner = select(func.unnest(counted).label("l")).where(p.c.run_id == run_id, *where).subquery()
    n = func.count().label("n")
    query = select(inner.c.l, n).group_by(inner.c.l).order_by(n.desc(), inner.c.l).limit(top)
    return [(r.l, int(r.n)) for r in conn.execute(query)]
