"""The model a service answers with: the champion, loaded once, swapped for a new one when the store pointer moves."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from patentml.exceptions import PatentMLError

if TYPE_CHECKING:
    from patentml.predict import Predictor
    from patentml.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A loaded model with what ``GET /v1/model`` says of it; replaced as a whole, never changed."""

    predictor: "Predictor"
    loaded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    #: The run's test score (``patentml.db.results.run_scores``); None without a database or a registered run.
    metrics: dict[str, Any] | None = None
    #: Requests take turns on the model: a predictor is not for concurrent calls, and on CPU a second
    #: concurrent batch would only share the same cores.
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def describe(self) -> dict[str, Any]:
        p = self.predictor
        return {"model": p.model_id, "variant": p.variant, "run_id": p.manifest.get("run_id"),
                "snapshot_id": p.manifest.get("snapshot_id"), "backend": p.backend.name,
                "explains": p.backend.explains, "labels": len(p.labels), "decision_rule": p.decision.name,
                "source": p.source, "loaded_at": self.loaded_at.isoformat(timespec="seconds"),
                "metrics": self.metrics}


def run_metrics(settings: "Settings", run_id: Any) -> dict[str, Any] | None:
    """The test score of ``run_id`` from the configured database, or None (no database, no such run)."""
    if run_id is None or not (settings.database_url or settings.pg_dir.is_dir()):
        return None  # no database configured and no embedded one to start
    from patentml.db.engine import get_engine
    from patentml.db.results import run_scores, score_of

    try:
        with get_engine(settings).connect() as conn:
            rows = run_scores(conn, [int(run_id)])
    except Exception as exc:  # the service answers without metrics rather than not at all
        log.warning("No metrics for run %s: %s", run_id, exc)
        return None
    return score_of(rows[0]) if rows else None


class ModelHolder:
    """Holds the current :class:`Loaded` model; a watcher thread looks at the champion pointer every
    ``reload_seconds`` and, when it names another model, loads and verifies that one before swapping it
    in (requests hold a reference to the model they started with, so a swap never cuts one short).

    With ``model_id`` or ``artifact`` the model is fixed and never reloaded.
    """

    def __init__(self, settings: "Settings", *, model_id: str | None = None, artifact: Path | str | None = None,
                 on_swap: Callable[[Loaded | None, Loaded], None] | None = None,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.model_id, self.artifact = model_id, artifact
        self.on_swap = on_swap or (lambda old, new: None)
        self.on_failure = on_failure or (lambda error: None)
        self.current: Loaded | None = None
        #: Why there is no model, or why the last reload failed (None when all is well).
        self.error: str | None = None
        self.failures = 0
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def follows_pointer(self) -> bool:
        return self.model_id is None and self.artifact is None

    def _load(self, model_id: str | None) -> Loaded:
        from patentml.predict import Predictor

        predictor = Predictor.open(self.settings, model_id=model_id, artifact=self.artifact)
        return Loaded(predictor, metrics=run_metrics(self.settings, predictor.manifest.get("run_id")))

    def _swap(self, new: Loaded) -> None:
        old, self.current = self.current, new  # one reference assignment: requests see the old or the new model
        self.error = None
        log.info("Serving %s (%s)", new.predictor.model_id, new.predictor.source)
        self.on_swap(old, new)
        if old is not None:
            with old.lock:  # after the request using it, if one is
                old.predictor.close()

    def load(self) -> bool:
        """Load the model now (start-up, and the watcher); True when a new model was swapped in.

        Failures are kept in :attr:`error` and the model being served stays; they are retried next time.
        """
        with self._load_lock:
            try:
                if self.current is not None and not self.follows_pointer:
                    return False
                wanted = self.model_id
                if self.follows_pointer:
                    from patentml.store import open_store

                    wanted = open_store(self.settings).get_pointer()
                    if wanted is None:
                        self.error = "the model store has no champion yet: run `patentml promote`"
                        return False
                    if self.current is not None and self.current.predictor.model_id == wanted:
                        return False
                self._swap(self._load(wanted))
                return True
            except PatentMLError as exc:
                self._failed(str(exc))
                log.error("Could not load the model: %s", exc)
            except Exception as exc:  # a watcher that dies would stop following the pointer for good
                self._failed(f"{exc.__class__.__name__}: {exc}")
                log.exception("Could not load the model")
            return False

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.error = error
        self.on_failure(error)

    def start(self) -> None:
        """Load the model and, when following the champion, start watching the pointer."""
        self.load()
        if self.follows_pointer and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="patentml-serve-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.serve_reload_seconds):
            self.load()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.current is not None:
            self.current.predictor.close()
