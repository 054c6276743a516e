"""Evaluate a run on its snapshot's test split and store every metric of the paper in Postgres.

Test labels that the training split never saw stay in the truth (as columns no model can predict),
so recall is not flattered by dropping them; their number is stored with the metrics.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from patentml.exceptions import DataError
from patentml.settings import Settings
from patentml.variants.base import DecisionRule, collect, load_backend

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

PAPER_RULE = DecisionRule(threshold=0.5, keep_top=False, name="t0.5")
TOP_SCORES = 5


def truth_matrix(doc_labels: list[list[str]], labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """(n, L + U) bool truth over the model's labels plus the U test labels outside them, and all names."""
    known = {l: i for i, l in enumerate(labels)}
    unseen = sorted({l for ls in doc_labels for l in ls if l not in known})
    names = labels + unseen
    index = {l: i for i, l in enumerate(names)}
    y = np.zeros((len(doc_labels), len(names)), dtype=bool)
    for row, ls in enumerate(doc_labels):
        for l in ls:
            y[row, index[l]] = True
    return y, names


def evaluate_run(engine: "Engine", run_id: int, settings: Settings | None = None, *, split: str = "test",
                 snapshot_id: int | None = None) -> dict[str, Any]:
    """Score a run's model on ``split`` under the paper's rule (0.5), the tuned rule, and per-label thresholds.

    ``snapshot_id`` scores on another snapshot's split (e.g. a CPC+IPC-trained model on the CPC-only
    test split); ids decide sides by hash, so that split never overlaps the model's training data.
    Such cross-snapshot results are returned, not stored (the run's rows describe its own snapshot).
    """
    from sqlalchemy import text

    from patentml.artifact import save_json, write_manifest, load_json
    from patentml.metrics import evaluate_scores
    from patentml.train import SplitCorpus, artifact_path

    with engine.connect() as conn:
        run = conn.execute(
            text("SELECT variant, dataset, snapshot_id FROM runs WHERE run_id = :r"), {"r": run_id}
        ).one_or_none()
    if run is None:
        raise DataError(f"There is no run {run_id}")
    folder = artifact_path(engine, run_id)
    backend = load_backend(folder)
    from patentml.embedcache import PgEmbeddingCache

    # Sentence vectors of test texts are reused across runs; benchmarks/predict.py times cold prediction.
    backend.embedding_cache = PgEmbeddingCache(engine)
    cross = snapshot_id is not None and snapshot_id != run.snapshot_id
    ids, texts, doc_labels = collect(SplitCorpus(engine, snapshot_id or run.snapshot_id, run.dataset, split))
    if not texts:
        raise DataError(f"The {split} split of snapshot {run.snapshot_id} ({run.dataset}) is empty")
    started = time.perf_counter()
    scores = backend.predict_scores(texts)
    predict_seconds = time.perf_counter() - started
    truth, names = truth_matrix(doc_labels, backend.labels)
    n_unseen = len(names) - len(backend.labels)
    full_scores = np.zeros(truth.shape, dtype=np.float32)
    full_scores[:, : scores.shape[1]] = scores

    d = backend.decision
    rules = [PAPER_RULE]
    if d.name != PAPER_RULE.name:
        rules.append(DecisionRule(d.threshold, d.keep_top, None, False, "tuned"))
    if d.per_label:
        rules.append(DecisionRule(d.threshold, d.keep_top, d.per_label, True, "per_label"))
    measured = []
    for rule in rules:
        per_label = None
        if rule.use_per_label:
            # Test labels outside the model's label space get an unreachable threshold.
            per_label = np.concatenate([np.asarray(rule.per_label, dtype=np.float64), np.full(n_unseen, 2.0)])
        measured.append((rule, evaluate_scores(truth, full_scores, names, threshold=rule.threshold,
                                               keep_top=rule.keep_top, per_label_thresholds=per_label)))
    results = {rule.name: _headline(m) for rule, m in measured}
    summary = {"run_id": run_id, "variant": run.variant, "split": split, "snapshot_id": snapshot_id or run.snapshot_id,
               "n_patents": len(texts), "n_unseen_labels": n_unseen, "predict_seconds": predict_seconds,
               "patents_per_second": len(texts) / max(predict_seconds, 1e-9), "chosen_rule": d.name, "rules": results}
    if cross:
        return summary
    with engine.begin() as conn:
        for table in ("run_metrics", "section_metrics", "label_metrics", "predictions"):
            conn.execute(
                text(f"DELETE FROM {table} WHERE run_id = :r" + ("" if table == "predictions" else " AND split = :s")),
                {"r": run_id, "s": split},
            )
        for rule, m in measured:
            _store_metrics(conn, run_id, split, rule, m, n_unseen, predict_seconds)
        _store_predictions(conn, run_id, ids, doc_labels, d.apply(scores), scores, backend.labels)
    if split == "test":
        # The artifact carries its own scores, so a model in the store says how good it is.
        save_json(folder / "metrics.json", summary)
        manifest = load_json(folder / "manifest.json")
        write_manifest(folder, {k: v for k, v in manifest.items()
                                if k not in ("files", "format", "format_version", "created_at")})
    log.info("Run %s (%s): %s", run_id, run.variant,
             ", ".join(f"{k}: F1 {v['f1']:.4f} P@1 {v['p_at_1']:.4f}" for k, v in results.items()))
    return summary


def _headline(m: dict[str, Any]) -> dict[str, float]:
    return {
        "precision": m["example"]["precision"], "recall": m["example"]["recall"], "f1": m["example"]["f1"],
        "p_at_1": m["at_k"]["p@1"], "r_at_5": m["at_k"]["r@5"], "empty_share": m["empty_share"],
        "mean_pred_labels": m["mean_pred_labels"],
    }


def _store_metrics(conn: "Connection", run_id: int, split: str, rule: DecisionRule, m: dict[str, Any],
                   n_unseen: int, predict_seconds: float) -> None:
    from sqlalchemy import text

    k = m["at_k"]
    conn.execute(
        text(
            """
            INSERT INTO run_metrics (run_id, split, rule, threshold, keep_top, precision, recall, f1,
                p_at_1, r_at_1, f1_at_1, p_at_5, r_at_5, f1_at_5, mean_pred_labels, mean_true_labels,
                empty_share, n_patents, n_unseen_labels, predict_seconds)
            VALUES (:r, :s, :rule, :t, :kt, :p, :rc, :f, :p1, :r1, :f11, :p5, :r5, :f15, :mp, :mt, :e, :n, :u, :ps)
            """
        ),
        {"r": run_id, "s": split, "rule": rule.name, "t": rule.threshold, "kt": rule.keep_top,
         "p": m["example"]["precision"], "rc": m["example"]["recall"], "f": m["example"]["f1"],
         "p1": k["p@1"], "r1": k["r@1"], "f11": k["f1@1"], "p5": k["p@5"], "r5": k["r@5"], "f15": k["f1@5"],
         "mp": m["mean_pred_labels"], "mt": m["mean_true_labels"], "e": m["empty_share"], "n": m["n_patents"],
         "u": n_unseen, "ps": predict_seconds},
    )
    conn.execute(
        text(
            "INSERT INTO section_metrics (run_id, split, rule, section, precision, recall, f1, n_patents) "
            "VALUES (:r, :s, :rule, :sec, :p, :rc, :f, :n)"
        ),
        [{"r": run_id, "s": split, "rule": rule.name, "sec": sec, "p": v["precision"], "rc": v["recall"],
          "f": v["f1"], "n": v["n_patents"]} for sec, v in m["sections"].items()],
    )
    conn.execute(
        text(
            "INSERT INTO label_metrics (run_id, split, rule, subclass, precision, recall, f1, support, n_predicted) "
            "VALUES (:r, :s, :rule, :l, :p, :rc, :f, :sup, :np)"
        ),
        [{"r": run_id, "s": split, "rule": rule.name, "l": lab, "p": v["precision"], "rc": v["recall"],
          "f": v["f1"], "sup": v["support"], "np": v["n_predicted"]} for lab, v in m["labels"].items()],
    )


def _store_predictions(conn: "Connection", run_id: int, ids: list[str], doc_labels: list[list[str]],
                       pred: np.ndarray, scores: np.ndarray, labels: list[str]) -> None:
    from sqlalchemy import text

    top = np.argsort(-scores, axis=1)[:, :TOP_SCORES]
    rows = []
    for i, pid in enumerate(ids):
        rows.append({
            "r": run_id, "p": pid, "t": doc_labels[i],
            "pl": [labels[j] for j in np.flatnonzero(pred[i])],
            "ts": json.dumps({labels[j]: round(float(scores[i, j]), 4) for j in top[i]}),
        })
    conn.execute(
        text("INSERT INTO predictions (run_id, patent_id, true_labels, pred_labels, top_scores) "
             "VALUES (:r, :p, :t, :pl, CAST(:ts AS jsonb))"),
        rows,
    )
