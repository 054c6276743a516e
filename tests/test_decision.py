"""Decision rules by hand: the threshold, keep-top, the top ratio, and what validation chooses."""

from __future__ import annotations

import numpy as np

from patentml.decision import TUNED, DecisionRule, choose_decision_rule, decide, describe_rule
from patentml.metrics import choose_threshold

# Three patents, four labels. Patent 0 is sure of two labels, patent 1 of one, patent 2 of none.
SCORES = np.array([[0.30, 0.27, 0.02, 0.01],
                   [0.90, 0.10, 0.05, 0.01],
                   [0.06, 0.05, 0.04, 0.01]], dtype=np.float32)
TRUTH = np.array([[1, 1, 0, 0],
                  [1, 0, 0, 0],
                  [1, 0, 0, 0]], dtype=bool)


def test_top_ratio_keeps_labels_close_to_the_patents_best() -> None:
    # threshold 0.5 + top: [0], [0], [0]; ratio 0.8 adds 0.27 >= 0.8 * 0.30 and 0.05 >= 0.8 * 0.06.
    assert decide(SCORES, 0.5, keep_top=True).tolist() == [[True, False, False, False], [True, False, False, False],
                                                          [True, False, False, False]]
    assert decide(SCORES, 0.5, keep_top=True, top_ratio=0.8).tolist() == [
        [True, True, False, False], [True, False, False, False], [True, True, False, False]]


def test_choose_threshold_with_a_ratio_by_hand() -> None:
    # Ratio 0.85: patent 0 gets {0, 1} (F1 1), patent 1 {0} (1), patent 2 {0} (0.05 < 0.051): 1 + 1 + 1 = 3.
    t, f1 = choose_threshold(TRUTH, SCORES, keep_top=True, top_ratio=0.85)
    # From 0.05 up: the lowest threshold that keeps patent 2's 0.05 and patent 1's 0.10 out is 0.15.
    assert f1 == 1.0 and t == 0.15
    # No ratio: t=0.15 gives {0, 1}, {0}, {0} as well: on these scores the ratio is not needed.
    assert choose_threshold(TRUTH, SCORES, keep_top=True) == (0.15, 1.0)


def test_validation_adopts_a_ratio_only_when_it_wins() -> None:
    # Patent 0's second label scores 0.27 of a best 0.30; patent 1's false second scores 0.28 of a best 0.90:
    # no global threshold separates them (0.27 < 0.28), a ratio in (0.31, 0.9] does: 0.4, the first of TOP_RATIOS.
    scores = np.array([[0.30, 0.27, 0.01], [0.90, 0.28, 0.01]], dtype=np.float32)
    truth = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    rule, f1 = choose_decision_rule(truth, scores)
    assert rule.name == TUNED and rule.keep_top and rule.top_ratio == 0.4 and f1 == 1.0
    assert rule.apply(scores).tolist() == truth.tolist()
    assert DecisionRule.from_dict(rule.to_dict()).top_ratio == 0.4
    assert DecisionRule.from_dict({"threshold": 0.3, "keep_top": True, "name": TUNED}).top_ratio == 0.0  # old models
    # Where a threshold alone is as good, the simpler rule wins the tie.
    plain, _ = choose_decision_rule(TRUTH[:2], SCORES[:2])
    assert plain.top_ratio == 0.0
    assert describe_rule(rule) == f"tuned t={rule.threshold:.2f} +top r=0.4"
    assert describe_rule({"rule": "t0.5", "threshold": 0.5, "keep_top": False, "top_ratio": 0.0}) == "t0.5 t=0.50"
