"""Training runs: one process, one variant, one row in ``runs``; per-epoch rows; a resumable work folder.

A run needs nothing but settings (database URL, home), so Airflow can run several side by side.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from patentml.exceptions import ConfigError, DataError
from patentml.settings import Settings
from patentml.variants import parse_variant
from patentml.variants.base import Backend, DecisionRule, EpochLog, FitContext, collect, label_matrix

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

ARTIFACT_DIR = "artifact"


class SplitCorpus:
    """A split streamed from Postgres each time it is iterated (server-side cursor)."""

    def __init__(self, engine: "Engine", snapshot_id: int, dataset: str, split: str) -> None:
        self.engine, self.snapshot_id, self.dataset, self.split = engine, snapshot_id, dataset, split
        self._len: int | None = None

    def __iter__(self) -> Iterator[tuple[str, str, list[str]]]:
        from patentml.splits import iter_split

        return iter_split(self.engine, self.snapshot_id, self.dataset, self.split)

    def __len__(self) -> int:
        if self._len is None:
            from sqlalchemy import text

            with self.engine.connect() as conn:
                self._len = int(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM snapshot_members WHERE snapshot_id = :s AND split = :p "
                            "AND (:full OR in_subset)"
                        ),
                        {"s": self.snapshot_id, "p": self.split, "full": self.dataset == "full"},
                    ).scalar()
                )
        return self._len


def configure_torch(settings: Settings) -> str:
    """Threads and device for this process; returns the device name used."""
    import torch

    threads = settings.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("PATENTML_DEVICE=cuda but torch sees no CUDA device")
    return settings.device


def build_params(spec_loss: str | None, settings: Settings, backend_cls: type[Backend], *, epochs: int | None,
                 batch_size: int | None, alpha: float | None, lr: float | None,
                 overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Variant-implied values, then settings, then explicit arguments (which win)."""
    params: dict[str, Any] = {}
    defaults = backend_cls.DEFAULTS
    if spec_loss is not None and "loss" in defaults:
        params["loss"] = spec_loss
    if "glove_path" in defaults and settings.glove_path:
        params["glove_path"] = settings.glove_path
    if "bert_model" in defaults and settings.bert_model:
        params["bert_model"] = settings.bert_model
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("alpha", alpha), ("lr", lr)):
        if value is not None:
            if key not in defaults:
                raise ConfigError(f"--{key.replace('_', '-')} does not apply to the {backend_cls.name} backend")
            params[key] = value
    params.update(overrides or {})
    return params


#: Per-label thresholds are adopted only if they beat the global rule out of sample by this much.
PER_LABEL_MIN_GAIN = 0.002
PER_LABEL_MIN_SUPPORT = 10


def choose_decision_rule(y_valid: np.ndarray, scores: np.ndarray) -> tuple[DecisionRule, float]:
    """The rule with the best validation example F1: a global threshold (with or without keep-top), and
    per-label thresholds with back-off to it for labels with little validation support.

    Per-label thresholds always look better on the data that chose them, so they are judged by
    two-fold cross-validation inside the validation split and adopted only for a real gain.
    """
    from patentml.metrics import choose_per_label_thresholds, choose_threshold, decide, example_prf

    best: tuple[DecisionRule, float] | None = None
    for keep_top in (False, True):
        threshold, f1 = choose_threshold(y_valid, scores, keep_top=keep_top)
        if best is None or f1 > best[1] + 1e-9:
            best = (DecisionRule(threshold=threshold, keep_top=keep_top, name="tuned"), f1)
    assert best is not None
    rule, f1 = best
    if len(y_valid) < 4 or y_valid.shape[1] < 2:
        return rule, f1
    folds = [np.arange(len(y_valid)) % 2 == k for k in (0, 1)]
    gains = []
    for fit_rows, test_rows in ((folds[0], folds[1]), (folds[1], folds[0])):
        t, _ = choose_threshold(y_valid[fit_rows], scores[fit_rows], keep_top=rule.keep_top)
        per = choose_per_label_thresholds(y_valid[fit_rows], scores[fit_rows], t,
                                          min_support=PER_LABEL_MIN_SUPPORT // 2, keep_top=rule.keep_top)
        base = example_prf(y_valid[test_rows], decide(scores[test_rows], t, rule.keep_top))["f1"]
        tuned = example_prf(y_valid[test_rows], decide(scores[test_rows], t, rule.keep_top, per))["f1"]
        gains.append(tuned - base)
    per_label = choose_per_label_thresholds(y_valid, scores, rule.threshold, min_support=PER_LABEL_MIN_SUPPORT,
                                            keep_top=rule.keep_top)
    rule.per_label = [float(x) for x in per_label]
    gain = float(np.mean(gains))
    log.info("Per-label thresholds: cross-validated gain %+.4f F1 on validation", gain)
    if gain > PER_LABEL_MIN_GAIN:
        rule.use_per_label, rule.name = True, "per_label"
        f1 = example_prf(y_valid, decide(scores, rule.threshold, rule.keep_top, per_label))["f1"]
    return rule, f1


def train(
    variant: str,
    settings: Settings,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    alpha: float | None = None,
    lr: float | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    snapshot_id: int | None = None,
    progress: bool = False,
    engine: "Engine | None" = None,
) -> int:
    """Train one variant on the latest (or given) snapshot; returns the run id."""
    from sqlalchemy import text

    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema
    from patentml.splits import label_space, latest_snapshot

    spec = parse_variant(variant)
    backend_cls = spec.backend_class()
    params = build_params(spec.loss, settings, backend_cls, epochs=epochs, batch_size=batch_size, alpha=alpha,
                          lr=lr, overrides=overrides)
    engine = engine or get_engine(settings)
    ensure_schema(engine)
    snapshot_id = snapshot_id or latest_snapshot(engine, settings.label_scheme)
    labels = label_space(engine, snapshot_id, spec.dataset)
    backend = backend_cls(labels, params)  # validates the settings before a run row exists
    device = configure_torch(settings) if backend_cls.name != "tfidf" else "cpu"
    mark_stale_runs(engine)
    with engine.begin() as conn:
        run_id = conn.execute(
            text(
                "INSERT INTO runs (variant, encoder, loss, dataset, snapshot_id, status, settings, seed, device, "
                "host, pid) VALUES (:v, :e, :l, :d, :s, 'running', CAST(:p AS jsonb), :seed, :dev, :h, :pid) "
                "RETURNING run_id"
            ),
            {"v": spec.name, "e": spec.encoder, "l": spec.loss, "d": spec.dataset, "s": snapshot_id,
             "p": json.dumps(backend.params), "seed": seed, "dev": device, "h": socket.gethostname(),
             "pid": os.getpid()},
        ).scalar_one()
    log.info("Run %s: %s on snapshot %s (%d labels), device %s", run_id, spec.name, snapshot_id, len(labels), device)
    _fit_and_save(engine, settings, run_id, backend, snapshot_id, spec.dataset, device, seed, progress)
    return int(run_id)


def mark_stale_runs(engine: "Engine") -> int:
    """Runs left 'running' by a process of this host that no longer exists become 'interrupted'."""
    from sqlalchemy import text

    host = socket.gethostname()
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT run_id, pid FROM runs WHERE status = 'running' AND host = :h"),
                            {"h": host}).all()
        stale = [r.run_id for r in rows if r.pid is None or not _alive(r.pid)]
        if stale:
            conn.execute(text("UPDATE runs SET status = 'interrupted', finished_at = now(), "
                              "error = 'the training process ended without finishing (killed?)' "
                              "WHERE run_id = ANY(:ids)"), {"ids": stale})
    return len(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resume(run_id: int, settings: Settings, *, progress: bool = False, engine: "Engine | None" = None) -> int:
    """Continue an interrupted or failed run from its last epoch checkpoint."""
    from sqlalchemy import text

    from patentml.db.engine import get_engine
    from patentml.splits import label_space

    engine = engine or get_engine(settings)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT variant, snapshot_id, settings, seed, status FROM runs WHERE run_id = :r"), {"r": run_id}
        ).one_or_none()
    if row is None:
        raise DataError(f"There is no run {run_id}")
    if row.status == "succeeded":
        raise DataError(f"Run {run_id} already succeeded; nothing to resume")
    spec = parse_variant(row.variant)
    labels = label_space(engine, row.snapshot_id, spec.dataset)
    backend = spec.backend_class()(labels, row.settings)
    device = configure_torch(settings) if backend.name != "tfidf" else "cpu"
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE runs SET status = 'running', error = NULL, pid = :pid, host = :h WHERE run_id = :r"),
            {"pid": os.getpid(), "h": socket.gethostname(), "r": run_id},
        )
    _fit_and_save(engine, settings, run_id, backend, row.snapshot_id, spec.dataset, device, row.seed, progress)
    return run_id


def _fit_and_save(engine: "Engine", settings: Settings, run_id: int, backend: Backend, snapshot_id: int,
                  dataset: str, device: str, seed: int, progress: bool) -> None:
    from sqlalchemy import text

    from patentml.artifact import atomic_dir, write_manifest

    work_dir = settings.runs_dir / str(run_id)
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def on_epoch(e: EpochLog) -> None:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO run_epochs (run_id, epoch, train_loss, valid_loss, valid_f1, valid_p_at_1, seconds, "
                    "patents_per_second) VALUES (:r, :e, :tl, :vl, :vf, :vp, :s, :pps) "
                    "ON CONFLICT (run_id, epoch) DO UPDATE SET train_loss = excluded.train_loss, "
                    "valid_loss = excluded.valid_loss, valid_f1 = excluded.valid_f1, "
                    "valid_p_at_1 = excluded.valid_p_at_1, seconds = excluded.seconds, "
                    "patents_per_second = excluded.patents_per_second"
                ),
                {"r": run_id, "e": e.epoch, "tl": None if np.isnan(e.train_loss) else e.train_loss,
                 "vl": e.valid_loss, "vf": e.valid_f1, "vp": e.valid_p_at_1, "s": e.seconds,
                 "pps": e.patents_per_second},
            )
            conn.execute(text("UPDATE runs SET epochs_done = :e WHERE run_id = :r"), {"e": e.epoch, "r": run_id})

    from patentml.embedcache import PgEmbeddingCache

    ctx = FitContext(work_dir=work_dir, device=device, seed=seed, progress=progress, cache_dir=settings.cache_dir,
                     cache_key=f"snapshot{snapshot_id}-{dataset}", on_epoch=on_epoch,
                     embedding_cache=PgEmbeddingCache(engine), engine=engine, snapshot_id=snapshot_id)
    try:
        train_corpus = SplitCorpus(engine, snapshot_id, dataset, "train")
        valid_corpus = SplitCorpus(engine, snapshot_id, dataset, "valid")
        backend.fit(train_corpus, valid_corpus, ctx)
        train_seconds = time.perf_counter() - started
        _, texts, doc_labels = collect(valid_corpus)
        if texts:
            scores = backend.predict_scores(texts)
            rule, valid_f1 = choose_decision_rule(label_matrix(doc_labels, backend.labels) > 0, scores)
            backend.decision = rule
            log.info("Decision rule chosen on validation: threshold %.2f, keep_top %s (valid F1 %.4f)",
                     rule.threshold, rule.keep_top, valid_f1)
        artifact = work_dir / ARTIFACT_DIR
        if artifact.exists():
            import shutil

            shutil.rmtree(artifact)
        with atomic_dir(artifact) as tmp:
            backend.save(tmp)
            write_manifest(tmp, {"run_id": run_id, "snapshot_id": snapshot_id, "variant": _variant_of(engine, run_id),
                                 "backend": backend.name})
        best_epoch = _best_epoch(engine, run_id)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE runs SET status = 'succeeded', finished_at = now(), train_seconds = :t, n_params = :n, "
                    "artifact_dir = :a, decision_rule = CAST(:d AS jsonb), best_epoch = :b WHERE run_id = :r"
                ),
                {"t": train_seconds, "n": backend.n_params(), "a": str(artifact),
                 "d": json.dumps(backend.decision.to_dict()), "b": best_epoch, "r": run_id},
            )
        log.info("Run %s finished in %.1f s; artifact in %s", run_id, train_seconds, artifact)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE runs SET status = :s, finished_at = now(), error = :e WHERE run_id = :r"),
                {"s": status, "e": message[-4000:], "r": run_id},
            )
        raise


def _variant_of(engine: "Engine", run_id: int) -> str:
    from sqlalchemy import text

    with engine.connect() as conn:
        return str(conn.execute(text("SELECT variant FROM runs WHERE run_id = :r"), {"r": run_id}).scalar_one())


def _best_epoch(engine: "Engine", run_id: int) -> int | None:
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT epoch FROM run_epochs WHERE run_id = :r AND valid_f1 IS NOT NULL "
                "ORDER BY valid_f1 DESC, epoch LIMIT 1"
            ),
            {"r": run_id},
        ).scalar()


def artifact_path(engine: "Engine", run_id: int) -> Path:
    from sqlalchemy import text

    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, artifact_dir FROM runs WHERE run_id = :r"), {"r": run_id}).one_or_none()
    if row is None:
        raise DataError(f"There is no run {run_id}")
    if row.status != "succeeded" or not row.artifact_dir:
        raise DataError(f"Run {run_id} has no model (status {row.status})")
    path = Path(row.artifact_dir)
    if not path.exists():
        raise DataError(f"The model of run {run_id} is missing from {path} (a different machine or PATENTML_HOME?)")
    return path
