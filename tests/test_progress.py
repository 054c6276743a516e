"""Progress lines for logs: counts, rate and time left, at most one per interval, and an end line."""

from __future__ import annotations

import logging

import pytest

from patentml import progress


def test_progress_lines_by_hand(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = iter([0.0, 10.0, 25.0, 30.0, 50.0, 60.0, 60.0, 60.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="patentml.progress")
    p = progress.Progress(100, "encoding abstracts", "abstract", every=20.0)  # started at 0
    p.update(20)  # t=10: too soon for a line
    p.update(30)  # t=25: 50 done in 25 s -> 2.0/s, 50 left -> 25 s = 0.4 min
    p.update(10)  # t=30: too soon after the last line
    p.update(40)  # t=50: 100 done
    p.close()     # t=60 (line) then t=60 for the total
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "encoding abstracts: 50/100 abstracts (2.0/s, 0.4 min left)"
    assert lines[1] == "encoding abstracts: 100/100 abstracts (2.0/s, 0.0 min left)"
    assert lines[2].endswith("done in 60 s") and len(lines) == 3


def test_tracked_counts_sizes() -> None:
    seen = list(progress.tracked(["a", "b", "c"], 7, "x", sizes=[3, 3, 1]))
    assert seen == ["a", "b", "c"]
