"""Score-level blend of finished runs: members' probabilities mixed with weights chosen on validation.

Saved as one artifact (each member's own folder inside, plus the weights), loaded and predicted as
one model, and promoted like any other.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from patentml.exceptions import ConfigError, DataError
from patentml.variants.base import Backend, Corpus, EpochLog, FitContext, collect, label_matrix, load_backend

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"


def simplex_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``n`` non-negative multiples of ``step`` summing to 1."""
    k = round(1 / step)
    return [tuple(c / k for c in combo) for combo in itertools.product(range(k + 1), repeat=n) if sum(combo) == k]


class Ensemble(Backend):
    """Weighted average of member scores; members are the latest runs of the named variants."""

    name = "ensemble"
    DEFAULTS: dict[str, Any] = {
        "members": ["tfidf-full", "embed-linear-full", "glove-wbce-full"],
        #: Explicit member run ids (instead of "latest run of each variant on this snapshot").
        "member_runs": None,
        "weight_step": 0.1,
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        self.members: list[Backend] = []
        self.weights: list[float] = []
        self.member_runs: list[int] = []

    def _member_runs(self, ctx: FitContext) -> list[tuple[int, Path]]:
        from sqlalchemy import text

        if ctx.engine is None or ctx.snapshot_id is None:
            raise ConfigError("the ensemble is built from finished runs and needs the database")
        found = []
        with ctx.engine.connect() as conn:
            if self.params["member_runs"]:
                for run_id in self.params["member_runs"]:
                    row = conn.execute(text("SELECT run_id, artifact_dir FROM runs WHERE run_id = :r AND "
                                            "status = 'succeeded'"), {"r": int(run_id)}).one_or_none()
                    if row is None:
                        raise DataError(f"ensemble member run {run_id} does not exist or did not succeed")
                    found.append((row.run_id, Path(row.artifact_dir)))
                return found
            for variant in self.params["members"]:
                row = conn.execute(
                    text("SELECT run_id, artifact_dir FROM runs WHERE variant = :v AND snapshot_id = :s "
                         "AND status = 'succeeded' ORDER BY run_id DESC LIMIT 1"),
                    {"v": variant, "s": ctx.snapshot_id},
                ).one_or_none()
                if row is None:
                    log.warning("ensemble: no finished %s run on snapshot %s; left out", variant, ctx.snapshot_id)
                    continue
                found.append((row.run_id, Path(row.artifact_dir)))
        if len(found) < 2:
            raise DataError(f"an ensemble needs at least two finished member runs on snapshot {ctx.snapshot_id}; "
                            f"found {len(found)} of {self.params['members']}")
        return found

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        import time

        from patentml.metrics import choose_threshold

        started = time.perf_counter()
        runs = self._member_runs(ctx)
        self.members = [load_backend(path) for _, path in runs]
        self.member_runs = [run_id for run_id, _ in runs]
        for (run_id, _), m in zip(runs, self.members):
            if m.labels != self.labels:
                raise DataError(f"ensemble member run {run_id} has another label space than this snapshot/dataset")
        _, texts, labels = collect(valid)
        truth = label_matrix(labels, self.labels) > 0
        scores = [m.predict_scores(texts) for m in self.members]
        best: tuple[float, tuple[float, ...]] = (-1.0, ())
        for weights in simplex_grid(len(scores), float(self.params["weight_step"])):
            blend = sum(w * s for w, s in zip(weights, scores))
            _, f1 = choose_threshold(truth, blend, keep_top=True)
            if f1 > best[0] + 1e-9:
                best = (f1, weights)
        self.weights = list(best[1])
        log.info("ensemble of runs %s: weights %s (validation F1 %.4f)", self.member_runs, self.weights, best[0])
        seconds = time.perf_counter() - started
        ctx.on_epoch(EpochLog(1, float("nan"), None, best[0], None, seconds, None))

    def predict_scores(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for w, m in zip(self.weights, self.members):
            if w > 0:
                out += w * m.predict_scores(texts)
        return out

    def n_params(self) -> int:
        return sum(m.n_params() for m, w in zip(self.members, self.weights) if w > 0)

    def _save(self, folder: Path) -> None:
        kept = []
        for i, (m, w, run_id) in enumerate(zip(self.members, self.weights, self.member_runs)):
            if w <= 0:
                continue  # a member with no weight does not travel
            sub = folder / f"member_{i}"
            m.save(sub)
            kept.append({"folder": sub.name, "weight": w, "run_id": run_id, "backend": m.name})
        (folder / ENSEMBLE_FILE).write_text(json.dumps({"members": kept}, indent=1))

    def _load(self, folder: Path) -> None:
        meta = json.loads((folder / ENSEMBLE_FILE).read_text())
        self.members = [load_backend(folder / m["folder"]) for m in meta["members"]]
        self.weights = [float(m["weight"]) for m in meta["members"]]
        self.member_runs = [int(m["run_id"]) for m in meta["members"]]

