"""Progress of long steps for people watching: a bar on a terminal, and log lines wherever logs go.

A task log (Airflow) or a piped terminal shows no bar, so every long step also logs a line at most
every :data:`LOG_EVERY_SECONDS`: done/total, rate and time left. ``scripts/run-main-job`` shows those
lines as they happen.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

log = logging.getLogger("patentml.progress")

#: Seconds between two progress lines of one step.
LOG_EVERY_SECONDS = 20.0


class Progress:
    """Counts work done on a step of ``total`` units; ``bar`` shows a tqdm bar as well."""

    def __init__(self, total: int | None, desc: str, unit: str = "item", bar: bool = False,
                 every: float = LOG_EVERY_SECONDS) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done = 0
        self.started = self.last = time.monotonic()
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", mininterval=1)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {self.done:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}s"
        text += f" ({rate:,.1f}/s"
        if self.total and rate > 0:
            text += f", {max(self.total - self.done, 0) / rate / 60:.1f} min left"
        return text + ")"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if time.monotonic() - self.started >= self.every:  # a long step says when it ended
            log.info("%s, done in %.0f s", self.line(), time.monotonic() - self.started)


def tracked(items: Iterable[T], total: int | None, desc: str, unit: str = "item", bar: bool = False,
            sizes: Iterable[int] | None = None) -> Iterator[T]:
    """``items`` with their progress counted (each item counts as one unit, or as its entry of ``sizes``)."""
    progress = Progress(total, desc, unit, bar)
    steps = iter(sizes) if sizes is not None else None
    try:
        for item in items:
            yield item
            progress.update(next(steps) if steps is not None else 1)
    finally:
        progress.close()
