"""The promotion decision as a pure function: a table of cases, no database and no store."""

from __future__ import annotations

import pytest

from patentml.promote.decide import Candidate, ChampionState, best_candidate, decide


def cand(run_id: int, f1: float, p1: float, variant: str = "tfidf-full") -> Candidate:
    return Candidate(run_id, variant, 1, "full", {"f1": f1, "p_at_1": p1, "rule": "tuned"}, "run_metrics")


def champ(f1: float | None, p1: float = 0.5, run_id: int | None = 7, broken: str | None = None) -> ChampionState:
    scores = None if f1 is None else {"f1": f1, "p_at_1": p1}
    return ChampionState("m-7", run_id=run_id, variant="glove-wbce-full", scores=scores, source="run_metrics",
                         broken=broken)


@pytest.mark.parametrize(
    ("candidates", "champion", "margin", "metric", "action", "reason"),
    [
        ([], None, 0.005, "example_f1", "none", "no challenger"),
        ([], champ(0.5), 0.005, "example_f1", "none", "champion stays m-7"),
        ([cand(1, 0.40, 0.5)], None, 0.005, "example_f1", "first", "first champion: run 1 (tfidf-full) example F1 0.4000"),
        ([cand(1, 0.40, 0.5)], champ(None, broken="missing weights"), 0.005, "example_f1", "promote",
         "cannot be loaded (missing weights)"),
        ([cand(1, 0.510, 0.5)], champ(0.500), 0.005, "example_f1", "promote", "wins by at least the margin"),
        ([cand(1, 0.505, 0.5)], champ(0.500), 0.005, "example_f1", "promote", "difference +0.0050"),  # exactly the margin
        ([cand(1, 0.503, 0.5)], champ(0.500), 0.005, "example_f1", "keep", "by less than the margin"),
        ([cand(1, 0.500, 0.9)], champ(0.500), 0.0, "example_f1", "keep", "tie, the champion stays"),
        ([cand(1, 0.450, 0.9)], champ(0.500), 0.005, "example_f1", "keep", "champion is better"),
        ([cand(7, 0.600, 0.9)], champ(0.500), 0.005, "example_f1", "keep", "run 7 is already the champion"),
        ([cand(1, 0.40, 0.70)], champ(0.50, p1=0.60), 0.05, "p_at_1", "promote", "P@1 0.7000"),
        ([cand(1, 0.40, 0.62), cand(2, 0.45, 0.61)], champ(0.9, p1=0.60), 0.01, "p_at_1", "promote",
         "run 1 (tfidf-full) P@1 0.6200 beat run 2 (tfidf-full) 0.6100"),
    ],
)
def test_decide(candidates: list[Candidate], champion: ChampionState | None, margin: float, metric: str, action: str,
                reason: str) -> None:
    decision = decide(candidates, champion, margin, metric, snapshot_id=3)
    assert decision.action == action
    assert reason in decision.reason
    assert decision.promotes == (action in ("first", "promote"))
    if candidates:
        assert decision.best is best_candidate(candidates, metric)
        assert "the full test split of snapshot 3" in decision.reason


def test_the_champions_score_is_part_of_the_decision() -> None:
    decision = decide([cand(1, 0.52, 0.5)], champ(0.50), 0.005, "example_f1")
    assert decision.champion_score == pytest.approx(0.50)
    assert decide([cand(1, 0.52, 0.5)], None, 0.005, "example_f1").champion_score is None
