"""Evaluation cost at the size of a nightly evaluation: 4,000 test patents x 630 subclasses, against its limits.

    .venv/bin/python benchmarks/metrics.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from patentml.metrics import choose_per_label_thresholds, choose_threshold, evaluate_scores

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_metrics import random_problem  # noqa: E402 - the same problem the correctness test checks

#: Seconds the evaluation of one run may take on 2 cores (it runs once per variant per night).
EVALUATE_LIMIT = 3.0
#: Seconds for choosing the global and the per-label thresholds on validation.
THRESHOLDS_LIMIT = 5.0


def main() -> None:
    y, s, names = random_problem(4000, 630, seed=0)
    s = s.astype(np.float32)
    started = time.perf_counter()
    evaluate_scores(y, s, names, threshold=0.4, keep_top=True)
    evaluate = time.perf_counter() - started
    started = time.perf_counter()
    choose_threshold(y, s)
    choose_per_label_thresholds(y, s, 0.4)
    thresholds = time.perf_counter() - started
    print("| step (4,000 x 630) | seconds | limit |")
    print("|---|---:|---:|")
    print(f"| evaluate_scores | {evaluate:.2f} | {EVALUATE_LIMIT:.1f} |")
    print(f"| choose_threshold + choose_per_label_thresholds | {thresholds:.2f} | {THRESHOLDS_LIMIT:.1f} |")


if __name__ == "__main__":
    main()
