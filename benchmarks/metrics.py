"""Evaluation cost at the size of a nightly evaluation: 4,000 test patents x 630 subclasses, against its limits.

    .venv/bin/python benchmarks/metrics.py
"""

from __future__ import annotations

import time

import numpy as np

from patentml.metrics import choose_per_label_thresholds, choose_threshold, evaluate_scores

#: Seconds the evaluation of one run may take on 2 cores (it runs once per variant per night).
EVALUATE_LIMIT = 3.0
#: Seconds for choosing the global and the per-label thresholds on validation.
THRESHOLDS_LIMIT = 5.0


def problem(n: int, n_labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Sparse truth (1-3 labels a patent) and scores that rank true labels higher, noisily."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, n_labels), dtype=bool)
    for i in range(n):
        y[i, rng.choice(n_labels, rng.integers(1, 4), replace=False)] = True
    scores = rng.random((n, n_labels)) ** 6
    scores[y] = np.clip(scores[y] + rng.random(int(y.sum())) * 0.9, 0, 1)
    names = [f"{'ABCDEFGHY'[j % 9]}{j % 100:02d}{chr(65 + j // 100)}" for j in range(n_labels)]
    return y, scores.astype(np.float32), names


def main() -> None:
    y, s, names = problem(4000, 630)
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
