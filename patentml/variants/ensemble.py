"""Score-level blend of finished runs: members' probabilities mixed with weights chosen on validation,
then (``rerank``) each patent's top candidates re-ranked by a second stage fitted on validation
(:mod:`patentml.rerank`).

Saved as one artifact (each member's own folder inside, the weights, the re-ranker's trees), loaded and
predicted as one model, and promoted like any other.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from patentml.exceptions import ConfigError, DataError
from patentml.sentence import text_hash
from patentml.variants.base import Backend, Corpus, EpochLog, FitContext, collect, load_backend

if TYPE_CHECKING:
    import numpy as np

    from patentml.rerank import LabelStats, Trees

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
RERANK_FILE = "rerank.safetensors"


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
        #: Re-rank each patent's ``rerank_depth`` best blend labels (patentml/rerank.py). Measured on the
        #: CPC-labelled test patents, mean of four seeds: +0.55 F1, +0.57 P@1, +0.80 R@5 over the blend
        #: (docs/results.md).
        "rerank": True,
        "rerank_depth": 30,
        #: Folds of the out-of-fold validation scores the decision rule is chosen on.
        "rerank_folds": 5,
        #: Fewer validation patents than this: no re-ranker (too little to fit trees on), the plain blend.
        "rerank_min_patents": 100,
        #: The re-ranker is kept only when its out-of-fold validation F1 beats the blend's by this much.
        "rerank_min_gain": 0.0,
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
        self.trees: Trees | None = None
        self.label_stats: LabelStats | None = None
        #: (digest of the validation texts, their out-of-fold re-ranked scores): what the rule is chosen on.
        self._held_out: tuple[str, "np.ndarray"] | None = None

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
        kept = [(i, w) for i, w in zip(chosen, weights) if w > 0]  # a member without weight takes no part
        self.members = [members[i] for i, _ in kept]
        self.member_runs = [runs[i] for i, _ in kept]
        self.weights = [w for _, w in kept]
        log.info("ensemble of runs %s: weights %s (validation F1 %.4f)", self.member_runs, self.weights, f1)
        if self.params["rerank"]:
            f1 = self._fit_reranker(train, texts, truth, [scores[i] for i, _ in kept], ctx.seed, f1)
        seconds = time.perf_counter() - started
        ctx.on_epoch(EpochLog(1, None, None, f1, None, seconds, None))

    def _fit_reranker(self, train: Corpus, texts: list[str], truth: "np.ndarray", scores: list["np.ndarray"],
                      seed: int, blend_f1: float) -> float:
        """Fit the second stage on validation; keep its out-of-fold scores for the decision rule."""
        import numpy as np

        from patentml.labels import multi_hot
        from patentml.metrics import choose_threshold
        from patentml.rerank import LabelStats, candidate_features, fit_out_of_fold, scatter

        if len(texts) < int(self.params["rerank_min_patents"]):
            log.warning("ensemble: %d validation patents, fewer than rerank_min_patents=%s: no re-ranker",
                        len(texts), self.params["rerank_min_patents"])
            return blend_f1
        _, _, train_labels = collect(train)
        stats = LabelStats.from_labels(multi_hot(train_labels, self.labels) > 0, self.labels)
        blend = sum(w * s for w, s in zip(self.weights, scores))
        order, features = candidate_features(scores, blend, stats, int(self.params["rerank_depth"]))
        candidates = np.take_along_axis(truth, order, axis=1).reshape(-1)
        try:
            trees, held_out = fit_out_of_fold(features, candidates, len(texts), int(self.params["rerank_folds"]), seed)
        except DataError as exc:
            log.warning("ensemble: no re-ranker (%s)", exc)
            return blend_f1
        held_out_scores = scatter(order, held_out, len(self.labels))
        f1 = choose_threshold(truth, held_out_scores, keep_top=True)[1]
        log.info("re-ranker: %d trees on the top %d of %d validation patents; validation F1 (out of fold) "
                 "%.4f, blend %.4f", trees.feature.shape[0], order.shape[1], len(texts), f1, blend_f1)
        if f1 <= blend_f1 + float(self.params["rerank_min_gain"]):
            log.warning("ensemble: the re-ranker does not beat the blend on validation (out of fold) by "
                        "rerank_min_gain=%s; the plain blend is kept", self.params["rerank_min_gain"])
            return blend_f1
        self.trees, self.label_stats = trees, stats
        self._held_out = (text_hash("\0".join(texts)), held_out_scores)
        return f1

    def member_scores(self, texts: Sequence[str]) -> list["np.ndarray"]:
        """The scores of each member, in member order."""
        out = []
        for m in self.members:
            m.embedding_cache = self.embedding_cache
            out.append(m.predict_scores(texts))
        return out

    def predict_scores(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        return self.combine(self.member_scores(texts))[1]

    def combine(self, scores: list["np.ndarray"]) -> tuple["np.ndarray", "np.ndarray"]:
        """(the weighted blend, the final scores: re-ranked when there is a re-ranker) of member scores."""
        import numpy as np

        n = len(scores[0]) if scores else 0
        blend = sum((w * s for w, s in zip(self.weights, scores)),
                    np.zeros((n, len(self.labels)), dtype=np.float32))
        if self.trees is None or self.label_stats is None or not n:
            return blend, blend
        from patentml.rerank import candidate_features, scatter

        order, features = candidate_features(scores, blend, self.label_stats, int(self.params["rerank_depth"]))
        return blend, scatter(order, self.trees.predict(features), len(self.labels))

    def rule_scores(self, texts: Sequence[str]) -> "np.ndarray":
        if self._held_out is not None and self._held_out[0] == text_hash("\0".join(texts)):
            return self._held_out[1]
        return self.predict_scores(texts)

    def explain(self, texts: Sequence[str], labels_per_text: Sequence[Sequence[str]],
                top_n: int = 5) -> list[dict[str, dict[str, Any]]]:
        """Each member's weight, its score for the label and its own reasons; ``blend_score`` is the sum of
        weight x score over the members, ``score`` the label's final score (the re-ranker's, when there is one)."""
        index = {label: j for j, label in enumerate(self.labels)}
        scores = self.member_scores(texts)
        blend, final = self.combine(scores)
        parts = [(w, m, s, m.explain(texts, labels_per_text, top_n))
                 for w, m, s in zip(self.weights, self.members, scores)]
        return [{label: {"method": "blend", "reranked": self.trees is not None,
                         "blend_score": round(float(blend[i, index[label]]), 4),
                         "score": round(float(final[i, index[label]]), 4), "members": [
            {"backend": m.name, "weight": w, "score": round(float(s[i, index[label]]), 4),
             "explanation": reasons[i][label]} for w, m, s, reasons in parts]} for label in labels}
            for i, labels in enumerate(labels_per_text)]

    def n_params(self) -> int:
        trees = self.trees.n_nodes if self.trees is not None else 0
        return trees + sum(m.n_params() for m in self.members)

    def _save(self, folder: Path) -> None:
        kept = []
        for i, (m, w, run_id) in enumerate(zip(self.members, self.weights, self.member_runs)):
            sub = folder / f"member_{i}"
            m.save(sub)
            kept.append({"folder": sub.name, "weight": w, "run_id": run_id, "backend": m.name})
        (folder / ENSEMBLE_FILE).write_text(json.dumps({"members": kept}, indent=1))
        if self.trees is not None and self.label_stats is not None:
            from patentml.artifact import save_arrays

            save_arrays(folder / RERANK_FILE, {**{f"trees.{k}": v for k, v in self.trees.arrays().items()},
                                               **{f"labels.{k}": v for k, v in self.label_stats.arrays().items()}})

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
        if (folder / RERANK_FILE).exists():
            from patentml.artifact import load_arrays
            from patentml.rerank import LabelStats, Trees

            arrays = load_arrays(folder / RERANK_FILE)
            part = {p: {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(p + ".")}
                    for p in ("trees", "labels")}
            try:
                self.trees, self.label_stats = Trees.from_arrays(part["trees"]), LabelStats.from_arrays(part["labels"])
            except KeyError as exc:
                raise ArtifactError(f"{folder / RERANK_FILE}: array {exc} is missing") from exc
