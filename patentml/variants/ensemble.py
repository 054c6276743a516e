"""Score-level blend of finished runs: members' probabilities mixed with weights chosen on validation.

Saved as one artifact (each member's own folder inside, plus the weights), loaded and predicted as
one model, and promoted like any other.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from patentml.exceptions import ConfigError, DataError
from patentml.variants.base import Backend, Corpus, EpochLog, FitContext, collect, load_backend

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"


def simplex_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``n`` non-negative multiples of ``step`` summing to 1."""
    k = round(1 / step)
    return [tuple(c / k for c in combo) for combo in itertools.product(range(k + 1), repeat=n) if sum(combo) == k]


def blend_f1(truth: "np.ndarray", scores: Sequence["np.ndarray"], weights: Sequence[float]) -> float:
    """Validation example F1 of a weighted blend under its best global threshold (keeping the top label)."""
    from patentml.metrics import choose_threshold

    return choose_threshold(truth, sum(w * s for w, s in zip(weights, scores)), keep_top=True)[1]


def select_members(truth: "np.ndarray", scores: Sequence["np.ndarray"], step: float, max_members: int,
                   min_gain: float) -> tuple[list[int], list[float], float]:
    """Greedy forward selection: start from the best single model, then add the member whose best
    weighting (a ``step`` simplex grid over the chosen ones) raises validation F1 most, while it
    raises it by ``min_gain`` and fewer than ``max_members`` are chosen.

    Returns (indices of the chosen members, their weights, validation F1).
    """
    import numpy as np

    from patentml.decision import TIE_EPS

    singles = [blend_f1(truth, [s], [1.0]) for s in scores]
    chosen = [int(np.argmax(singles))]
    weights, best = [1.0], singles[chosen[0]]
    while len(chosen) < max_members:
        candidate: tuple[float, int, list[float]] = (best, -1, weights)
        for i in range(len(scores)):
            if i in chosen:
                continue
            trial = [scores[j] for j in chosen + [i]]
            for grid_weights in simplex_grid(len(trial), step):
                if grid_weights[-1] == 0:
                    continue  # the candidate must take part
                f1 = blend_f1(truth, trial, grid_weights)
                if f1 > candidate[0] + TIE_EPS:
                    candidate = (f1, i, list(grid_weights))
        if candidate[1] < 0 or candidate[0] < best + min_gain:
            break
        best, weights = candidate[0], candidate[2]
        chosen.append(candidate[1])
    return chosen, weights, best


class Ensemble(Backend):
    """Weighted average of member scores. The caller hands in the candidate runs (the latest run of each
    variant in ``members``, or the ``member_runs``); members and weights are picked greedily on
    validation (``select_members``)."""

    name = "ensemble"
    built_from_runs = True
    explains = True
    DEFAULTS: dict[str, Any] = {
        "members": ["tfidf-svm-full", "embed-linear-full", "embed-knn-full"],
        #: Explicit member run ids (instead of "latest run of each variant on this snapshot").
        "member_runs": None,
        "weight_step": 0.1,
        #: Members are added greedily, best validation blend first, up to this many, while each
        #: addition raises validation F1 by at least ``min_gain``.
        "max_members": 3,
        "min_gain": 0.002,
    }
    CANDIDATE_SETTINGS = ("members", "member_runs")

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        step = self.params["weight_step"]
        if not isinstance(step, (int, float)) or not 0 < step <= 1 or abs(1 / step - round(1 / step)) > 1e-6:
            raise ConfigError(f"weight_step must divide 1 into equal parts (0.1, 0.25, 0.5, ...), got {step!r}")
        if int(self.params["max_members"]) < 1:
            raise ConfigError(f"max_members must be at least 1, got {self.params['max_members']!r}")
        self.members: list[Backend] = []
        self.weights: list[float] = []
        self.member_runs: list[int] = []

    def uses_torch(self) -> bool:
        return any(m.uses_torch() for m in self.members)

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        import time

        from patentml.labels import multi_hot

        started = time.perf_counter()
        runs, members = [], []
        for run_id, member in ctx.members:
            if member.labels != self.labels:
                log.warning("ensemble: run %s has another label space than this snapshot/dataset; left out", run_id)
                continue
            member.embedding_cache = ctx.embedding_cache
            runs.append(run_id)
            members.append(member)
        if len(members) < 2:
            raise DataError(f"an ensemble needs at least two member runs with this label space; found {len(members)}")
        _, texts, labels = collect(valid)
        truth = multi_hot(labels, self.labels) > 0
        scores = [m.predict_scores(texts) for m in members]
        chosen, weights, f1 = select_members(truth, scores, float(self.params["weight_step"]),
                                             int(self.params["max_members"]), float(self.params["min_gain"]))
        self.members = [members[i] for i in chosen]
        self.member_runs = [runs[i] for i in chosen]
        self.weights = weights
        log.info("ensemble of runs %s: weights %s (validation F1 %.4f)", self.member_runs, self.weights, f1)
        seconds = time.perf_counter() - started
        ctx.on_epoch(EpochLog(1, None, None, f1, None, seconds, None))

    def predict_scores(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        import numpy as np

        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for w, m in zip(self.weights, self.members):
            if w > 0:
                m.embedding_cache = self.embedding_cache
                out += w * m.predict_scores(texts)
        return out

    def explain(self, texts: Sequence[str], labels_per_text: Sequence[Sequence[str]],
                top_n: int = 5) -> list[dict[str, dict[str, Any]]]:
        """Each member's weight, its score for the label and its own reasons; the blend's score is the sum
        of weight x score over the members."""
        index = {label: j for j, label in enumerate(self.labels)}
        parts = []
        for w, m in zip(self.weights, self.members):
            if w > 0:
                m.embedding_cache = self.embedding_cache
                parts.append((w, m, m.predict_scores(texts), m.explain(texts, labels_per_text, top_n)))
        return [{label: {"method": "blend", "members": [
            {"backend": m.name, "weight": w, "score": round(float(scores[i, index[label]]), 4),
             "explanation": reasons[i][label]} for w, m, scores, reasons in parts]} for label in labels}
            for i, labels in enumerate(labels_per_text)]

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
        from patentml.artifact import artifact_member
        from patentml.exceptions import ArtifactError

        meta = json.loads((folder / ENSEMBLE_FILE).read_text())
        for m in meta["members"]:
            # A member is a folder directly inside this artifact (what _save writes), never a path elsewhere.
            if not isinstance(m.get("folder"), str) or "/" in m["folder"]:
                raise ArtifactError(f"{folder / ENSEMBLE_FILE}: member folder {m.get('folder')!r} must be one "
                                    "folder name inside the artifact")
            artifact_member(folder, m["folder"], "ensemble member folder")
        self.members = [load_backend(folder / m["folder"]) for m in meta["members"]]
        self.weights = [float(m["weight"]) for m in meta["members"]]
        self.member_runs = [int(m["run_id"]) for m in meta["members"]]
