"""How scores become labels: decision rules, the rule a run chooses on validation, and which rule a run is scored by.

Light on purpose (numpy only, imported lazily): prediction applies rules and must start fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: Paper (section 6): a label is predicted when its sigmoid output reaches 0.5.
PAPER_THRESHOLD = 0.5
#: Rule names, as stored in ``run_metrics.rule`` and ``runs.rule``.
PAPER, TUNED, PER_LABEL = "t0.5", "tuned", "per_label"
RULE_NAMES = (PAPER, TUNED, PER_LABEL)
#: A threshold no sigmoid score reaches: labels a model cannot predict (test labels outside its label space).
UNREACHABLE_THRESHOLD = 2.0
#: Differences of validation scores below this are float noise: a tie.
TIE_EPS = 1e-9
#: Per-label thresholds are adopted only if they beat the global rule out of sample by this much.
PER_LABEL_MIN_GAIN = 0.002
PER_LABEL_MIN_SUPPORT = 10
#: Top ratios the tuned rule may add (with keep-top): a label also counts when it scores at least this
#: share of its patent's best score. Chosen on validation with the threshold; 0 adds nothing. Measured
#: (benchmarks/quality.py): +1.2 points of example F1 on the CPC-labelled test patents for the blend.
TOP_RATIOS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7)


def decide(scores: Any, threshold: float = PAPER_THRESHOLD, keep_top: bool = False,
           per_label_thresholds: Any = None, top_ratio: float = 0.0) -> "np.ndarray":
    """Predicted label sets (n, L) bool: ``score >= threshold`` (per label when given, NaN = global).

    ``keep_top`` also predicts each patent's best label, so no patent is left without a label
    (the paper: 20 % of its predictions were empty although every patent has a label);
    ``top_ratio`` > 0 also each label scoring at least that share of its patent's best score (a
    patent whose best label is sure keeps its close seconds, one whose scores are all low gets few).
    """
    import numpy as np

    score = np.asarray(scores)
    if score.ndim != 2:
        raise ValueError(f"scores must be 2-D (patents, labels), got shape {score.shape}")
    thresholds: Any = float(threshold)
    if per_label_thresholds is not None:
        per_label = np.asarray(per_label_thresholds, dtype=np.float64)
        if per_label.shape != (score.shape[1],):
            raise ValueError(f"per_label_thresholds must have shape ({score.shape[1]},), got {per_label.shape}")
        thresholds = np.where(np.isnan(per_label), float(threshold), per_label)
    predicted = score >= thresholds
    if top_ratio > 0 and score.shape[1]:
        predicted |= score >= float(top_ratio) * score.max(axis=1, keepdims=True)
    if keep_top and score.shape[0] and score.shape[1]:
        predicted[np.arange(score.shape[0]), score.argmax(axis=1)] = True
    return predicted


@dataclass
class DecisionRule:
    """A global threshold, keep-the-top-label, and optionally per-label thresholds.

    ``per_label`` holds thresholds chosen on validation; they are applied only when ``use_per_label``
    (they are kept otherwise so the evaluation can report them beside the global rule). ``name`` is
    one of :data:`RULE_NAMES`: the ``run_metrics`` rows of that name are the run's score.
    """

    threshold: float = PAPER_THRESHOLD
    keep_top: bool = False
    per_label: list[float] | None = None
    use_per_label: bool = False
    name: str = PAPER
    top_ratio: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "keep_top": self.keep_top, "per_label": self.per_label,
                "use_per_label": self.use_per_label, "name": self.name, "top_ratio": self.top_ratio}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "DecisionRule":
        data = data or {}
        rule = cls(threshold=float(data.get("threshold", PAPER_THRESHOLD)), keep_top=bool(data.get("keep_top", False)),
                   per_label=data.get("per_label"), use_per_label=bool(data.get("use_per_label", False)),
                   top_ratio=float(data.get("top_ratio", 0.0)))
        rule.name = rule_name(data)
        return rule

    def apply(self, scores: "np.ndarray") -> "np.ndarray":
        """Boolean (n, labels) decisions for probability scores (n, labels)."""
        use = self.use_per_label and self.per_label is not None
        return decide(scores, self.threshold, self.keep_top, self.per_label if use else None, self.top_ratio)

    def variants(self, n_unseen: int = 0) -> list["DecisionRule"]:
        """The rules an evaluation reports for a run with this rule: the paper's 0.5, the tuned global rule,
        and per-label thresholds when there are any; ``n_unseen`` extra labels get unreachable thresholds."""
        out = [DecisionRule()]
        if self.name != PAPER:
            out.append(DecisionRule(self.threshold, self.keep_top, None, False, TUNED, self.top_ratio))
        if self.per_label:
            per = [*map(float, self.per_label), *[UNREACHABLE_THRESHOLD] * n_unseen]
            out.append(DecisionRule(self.threshold, self.keep_top, per, True, PER_LABEL, self.top_ratio))
        return out


def describe_rule(rule: Any) -> str:
    """``tuned t=0.40 +top r=0.6``: a rule (a ``run_metrics`` row or a DecisionRule) in a leaderboard cell."""
    get = rule.get if isinstance(rule, dict) else lambda key: getattr(rule, "name" if key == "rule" else key)
    text = f"{get('rule')} t={get('threshold'):.2f}" + (" +top" if get("keep_top") else "")
    return text + (f" r={get('top_ratio'):.1f}" if get("top_ratio") else "")


def rule_name(decision: dict[str, Any] | None) -> str:
    """Which of :data:`RULE_NAMES` a stored decision rule is: the rule a run is scored by everywhere."""
    if not decision:
        return PAPER
    if decision.get("per_label") and decision.get("use_per_label"):
        return PER_LABEL
    return PAPER if decision.get("name") == PAPER else TUNED


def choose_decision_rule(y_valid: "np.ndarray", scores: "np.ndarray") -> tuple[DecisionRule, float]:
    """The rule with the best validation example F1: a global threshold (with or without keep-top; with
    it, also a top ratio of :data:`TOP_RATIOS`), and per-label thresholds with back-off to it for labels
    with little validation support. Ties go to the simpler rule (no keep-top, then no ratio).

    Per-label thresholds always look better on the data that chose them, so they are judged by
    two-fold cross-validation inside the validation split and adopted only for a real gain.
    """
    import numpy as np

    from patentml.metrics import choose_per_label_thresholds, choose_threshold, example_prf

    best: tuple[DecisionRule, float] | None = None
    for keep_top, ratio in [(False, 0.0), *((True, r) for r in TOP_RATIOS)]:
        threshold, f1 = choose_threshold(y_valid, scores, keep_top=keep_top, top_ratio=ratio)
        if best is None or f1 > best[1] + TIE_EPS:
            best = (DecisionRule(threshold=threshold, keep_top=keep_top, name=TUNED, top_ratio=ratio), f1)
    assert best is not None
    rule, f1 = best
    if len(y_valid) < 4 or y_valid.shape[1] < 2:
        return rule, f1
    folds = [np.arange(len(y_valid)) % 2 == k for k in (0, 1)]
    gains = []
    for fit_rows, test_rows in ((folds[0], folds[1]), (folds[1], folds[0])):
        t, _ = choose_threshold(y_valid[fit_rows], scores[fit_rows], keep_top=rule.keep_top, top_ratio=rule.top_ratio)
        per = choose_per_label_thresholds(y_valid[fit_rows], scores[fit_rows], t,
                                          min_support=PER_LABEL_MIN_SUPPORT // 2, keep_top=rule.keep_top)
        base = example_prf(y_valid[test_rows], decide(scores[test_rows], t, rule.keep_top, None, rule.top_ratio))["f1"]
        tuned = example_prf(y_valid[test_rows], decide(scores[test_rows], t, rule.keep_top, per, rule.top_ratio))["f1"]
        gains.append(tuned - base)
    per_label = choose_per_label_thresholds(y_valid, scores, rule.threshold, min_support=PER_LABEL_MIN_SUPPORT,
                                            keep_top=rule.keep_top)
    rule.per_label = [float(x) for x in per_label]
    gain = float(np.mean(gains))
    log.info("Per-label thresholds: cross-validated gain %+.4f F1 on validation", gain)
    if gain > PER_LABEL_MIN_GAIN:
        rule.use_per_label, rule.name = True, PER_LABEL
        f1 = example_prf(y_valid, decide(scores, rule.threshold, rule.keep_top, per_label, rule.top_ratio))["f1"]
    return rule, f1
