"""The promotion decision as a pure function: candidates and the champion's scores in, an action and its reason out.

No database, no store: :func:`decide` is table-tested on plain values, and the I/O shell in
:mod:`patentml.promote` gathers its inputs and acts on its answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from patentml.decision import TIE_EPS

#: Metrics that can pick the best challenger; each breaks the other's ties.
METRICS = ("example_f1", "p_at_1")
#: The dataset whose test split decides promotions (the paper's USPTO-2M).
DATASET = "full"
SPLIT = "test"
#: What each action is called in the CLI.
HEADLINES = {"first": "PROMOTED (first champion)", "promote": "PROMOTED", "keep": "KEPT the champion",
             "none": "NOTHING to promote", "rollback": "ROLLED BACK"}


def metric_value(scores: dict[str, Any], metric: str) -> float:
    return float(scores["f1"] if metric == "example_f1" else scores["p_at_1"])


def metric_label(metric: str) -> str:
    return "example F1" if metric == "example_f1" else "P@1"


@dataclass
class Candidate:
    """A challenger: a run and its scores on the comparison test split."""

    run_id: int
    variant: str
    snapshot_id: int
    dataset: str
    scores: dict[str, Any]
    #: Where the scores come from: ``run_metrics`` or ``rescored``.
    source: str
    #: A local copy of the run's model, once fetched from the store (re-scoring, upload).
    artifact: Path | None = None
    #: The sha256 of the run's manifest (``runs.artifact_sha256``): it names the promoted model.
    manifest_sha256: str | None = None

    def summary(self, metric: str) -> dict[str, Any]:
        return {"run_id": self.run_id, "variant": self.variant, "snapshot_id": self.snapshot_id,
                "dataset": self.dataset, "rule": self.scores.get("rule"), "score": metric_value(self.scores, metric),
                "f1": self.scores["f1"], "p_at_1": self.scores["p_at_1"], "scores_from": self.source}


@dataclass
class ChampionState:
    """The current champion as the decision sees it: its scores on the same split, or why it cannot be used."""

    model_id: str
    run_id: int | None = None
    variant: str | None = None
    scores: dict[str, Any] | None = None
    source: str = ""
    #: Set when the champion's artifact cannot be loaded (corrupted, incomplete): it is replaced.
    broken: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "run_id": self.run_id, "variant": self.variant, "scores": self.scores,
                "scores_from": self.source, "broken": self.broken}


@dataclass(frozen=True)
class Decision:
    action: str  # none | first | promote | keep
    reason: str
    best: Candidate | None = None
    champion_score: float | None = None

    @property
    def promotes(self) -> bool:
        return self.action in ("first", "promote")


def best_candidate(candidates: Sequence[Candidate], metric: str) -> Candidate:
    """Highest metric, ties by the other metric, then the oldest run: a blend that kept a single member
    scores exactly as that member and must not replace it with a wrapper."""
    other = "p_at_1" if metric == "example_f1" else "example_f1"
    return max(candidates, key=lambda c: (metric_value(c.scores, metric), metric_value(c.scores, other), -c.run_id))


def decide(candidates: Sequence[Candidate], champion: ChampionState | None, margin: float, metric: str,
           snapshot_id: int | None = None) -> Decision:
    """Whether the best candidate replaces the champion (``None``: there is none yet), and why.

    The challenger must beat the champion by at least ``margin`` of ``metric`` on the same test split;
    a tie keeps the champion, and a champion that cannot be loaded is replaced by any challenger.
    """
    where = f"the {DATASET} test split" + (f" of snapshot {snapshot_id}" if snapshot_id is not None else "")
    current = champion.model_id if champion is not None else None
    if not candidates:
        return Decision("none", f"no challenger: no succeeded, evaluated run of a {DATASET} variant on "
                                f"{'snapshot ' + str(snapshot_id) if snapshot_id is not None else 'no snapshot yet'}; "
                                f"champion stays {current or '(none)'}")
    best = best_candidate(candidates, metric)
    label, score = metric_label(metric), metric_value(best.scores, metric)
    picked = f"run {best.run_id} ({best.variant}) {label} {score:.4f}"
    others = [c for c in candidates if c is not best]
    if others:
        picked += " beat " + ", ".join(f"run {c.run_id} ({c.variant}) {metric_value(c.scores, metric):.4f}"
                                       for c in others)
    if champion is None:
        return Decision("first", f"first champion: {picked} on {where}", best)
    if champion.broken:
        return Decision("promote", f"{picked} on {where}; the current champion {current} cannot be loaded "
                                   f"({champion.broken}), so it is replaced", best)
    assert champion.scores is not None, "a champion that is not broken has scores"
    theirs = metric_value(champion.scores, metric)
    diff = score - theirs
    versus = (f"{picked}; champion {current} {label} {theirs:.4f} ({champion.source}) on {where}: "
              f"difference {diff:+.4f}, margin {margin:.4f}")
    if champion.run_id is not None and champion.run_id == best.run_id:
        return Decision("keep", f"run {best.run_id} is already the champion ({current}); {versus}", best, theirs)
    if abs(diff) <= TIE_EPS:
        return Decision("keep", f"tie, the champion stays: {versus}", best, theirs)
    if diff > TIE_EPS and diff >= margin - TIE_EPS:
        return Decision("promote", f"challenger wins by at least the margin: {versus}", best, theirs)
    if diff > 0:
        return Decision("keep", f"challenger better but by less than the margin, the champion stays: {versus}",
                        best, theirs)
    return Decision("keep", f"champion is better, it stays: {versus}", best, theirs)
