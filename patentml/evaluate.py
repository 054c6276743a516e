"""Evaluate a run on its snapshot's test split and store every metric of the paper in Postgres.

The artifact is read, never written: what a model scores lives in the database, so a model's id
(derived from what training wrote) does not change when it is evaluated again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from patentml.exceptions import DataError
from patentml.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

#: Scores kept per test patent in ``predictions.top_scores``.
TOP_SCORES = 5
SCORE_DIGITS = 4


def evaluate_run(engine: "Engine", run_id: int, settings: Settings | None = None, *, split: str = "test",
                 snapshot_id: int | None = None) -> dict[str, Any]:
    """Score a run's model on ``split`` under the paper's rule (0.5), the tuned rule, and per-label thresholds.

    ``snapshot_id`` scores on another snapshot's split (e.g. a CPC+IPC-trained model on the CPC-only
    test split); ids decide sides by hash, so that split never overlaps the model's training data.
    Such cross-snapshot results are returned, not stored (the run's rows describe its own snapshot).
    """
    from patentml.db import results, runs
    from patentml.embedcache import PgEmbeddingCache
    from patentml.scoring import headline, measure, predict_split
    from patentml.splits import SplitCorpus
    from patentml.train import artifact_path
    from patentml.variants.base import load_backend

    with engine.connect() as conn:
        run = runs.get(conn, run_id)
    if run is None:
        raise DataError(f"There is no run {run_id}")
    backend = load_backend(artifact_path(engine, run_id, settings))
    # Sentence vectors of test texts are reused across runs; benchmarks/predict.py times cold prediction.
    backend.embedding_cache = PgEmbeddingCache(engine)
    on = snapshot_id or run.snapshot_id
    pred = predict_split(backend, SplitCorpus(engine, on, run.dataset, split),
                         f"{split} split of snapshot {on} ({run.dataset})")
    measured = [(rule, measure(pred, rule)) for rule in backend.decision.variants(pred.n_unseen)]
    summary = {"run_id": run_id, "variant": run.variant, "split": split, "snapshot_id": on,
               "n_patents": len(pred.ids), "n_unseen_labels": pred.n_unseen, "predict_seconds": pred.seconds,
               "patents_per_second": len(pred.ids) / max(pred.seconds, 1e-9), "rule": backend.decision.name,
               "rules": {rule.name: headline(m) for rule, m in measured}}
    if on != run.snapshot_id:
        return summary
    with engine.begin() as conn:
        results.replace_evaluation(conn, run_id, split, measured, pred.n_unseen, pred.seconds,
                                   _predictions(pred, backend.decision.apply(pred.scores), backend.labels))
    log.info("Run %s (%s): %s", run_id, run.variant,
             ", ".join(f"{k}: F1 {v['f1']:.4f} P@1 {v['p_at_1']:.4f}" for k, v in summary["rules"].items()))
    return summary


def _predictions(pred: Any, decided: Any, labels: list[str]) -> list[dict[str, Any]]:
    """``predictions`` rows: truth, the run's decisions and its top scores per test patent."""
    import numpy as np

    from patentml.metrics import top_k

    top = top_k(pred.scores, min(TOP_SCORES, pred.scores.shape[1]))
    return [{"patent_id": pid, "true_labels": pred.doc_labels[i],
             "pred_labels": [labels[j] for j in np.flatnonzero(decided[i])],
             "top_scores": {labels[j]: round(float(pred.scores[i, j]), SCORE_DIGITS) for j in top[i]}}
            for i, pid in enumerate(pred.ids)]
