"""Training runs: one process, one variant, one row in ``runs``; per-epoch rows; a resumable work folder.

A run needs nothing but settings (database URL, home, model store), so Airflow can run several side
by side on different hosts. The backend is handed its inputs (the splits, the vector cache, the
member models of a blend); only this module talks to the database. Every epoch's checkpoint goes to
the store and the finished artifact is uploaded as a candidate (:mod:`patentml.runstore`), so a retry
or a later task on any host finds them there.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patentml.exceptions import ConfigError, DataError
from patentml.settings import Settings
from patentml.variants import parse_variant
from patentml.variants.base import SENTENCE_VECTORS, Backend, EpochLog, FitContext

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from patentml.db.runs import RunOrigin
    from patentml.variants import VariantSpec

log = logging.getLogger(__name__)

ARTIFACT_DIR = "artifact"
#: CLI flags that map onto backend settings of the same name.
FLAG_SETTINGS = ("epochs", "batch_size", "alpha", "lr")
#: Backend settings filled from Settings when the backend has them.
FROM_SETTINGS = ("glove_path", "bert_model")


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


def build_params(spec_loss: str | None, settings: Settings, backend_cls: type[Backend],
                 overrides: dict[str, Any] | None = None, **flags: Any) -> dict[str, Any]:
    """Variant-implied values, then settings, then explicit flags and overrides (which win)."""
    params: dict[str, Any] = {}
    defaults = backend_cls.DEFAULTS
    if backend_cls.has_loss:
        params["loss"] = spec_loss
    for key in FROM_SETTINGS:
        if key in defaults and getattr(settings, key):
            params[key] = getattr(settings, key)
    for key, value in flags.items():
        if value is None:
            continue
        if key not in defaults:
            raise ConfigError(f"--{key.replace('_', '-')} does not apply to the {backend_cls.name} backend")
        params[key] = value
    params.update(overrides or {})
    return params


def train(variant: str, settings: Settings, *, epochs: int | None = None, batch_size: int | None = None,
          alpha: float | None = None, lr: float | None = None, seed: int = 0, overrides: dict[str, Any] | None = None,
          snapshot_id: int | None = None, progress: bool = False, engine: "Engine | None" = None,
          origin: "RunOrigin | None" = None) -> int:
    """Train one variant on the latest (or given) snapshot; returns the run id.

    ``origin`` names the Airflow task instance: a later try of it continues the run an earlier try
    started (same row, from its last stored checkpoint) instead of starting another.
    """
    from patentml.db import runs
    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema
    from patentml.splits import label_space, latest_snapshot

    spec = parse_variant(variant)
    backend_cls = spec.backend_class()
    params = build_params(spec.loss, settings, backend_cls, overrides, epochs=epochs, batch_size=batch_size,
                          alpha=alpha, lr=lr)
    engine = engine or get_engine(settings)
    ensure_schema(engine)
    if origin is not None:
        with engine.connect() as conn:
            earlier = runs.by_origin(conn, origin, spec.name)
        if earlier is not None and earlier.status == "succeeded":
            log.info("Run %s: an earlier try (%s) of this task already trained it", earlier.run_id, earlier.try_number)
            return int(earlier.run_id)
        if earlier is not None:
            log.info("Run %s: try %d of %s[%d] continues it (it was %s on %s after epoch %d)", earlier.run_id,
                     origin.try_number, origin.task_id, origin.map_index, earlier.status, earlier.host,
                     earlier.epochs_done)
            return resume(int(earlier.run_id), settings, progress=progress, engine=engine,
                          try_number=origin.try_number)
    snapshot_id = snapshot_id or latest_snapshot(engine, settings.label_scheme)
    labels = label_space(engine, snapshot_id, spec.dataset)
    backend = backend_cls(labels, params)  # validates the settings before a run row exists
    members = _members(engine, settings, backend, snapshot_id) if backend.built_from_runs else []
    device = _device(settings, backend, members)
    mark_stale_runs(engine)
    with engine.begin() as conn:
        run_id = runs.create(conn, spec, snapshot_id, backend.params, seed=seed, device=device,
                             host=socket.gethostname(), pid=os.getpid(), origin=origin)
    log.info("Run %s: %s on snapshot %s (%d labels), device %s", run_id, spec.name, snapshot_id, len(labels), device)
    _fit_and_save(engine, settings, run_id, backend, snapshot_id, spec, device, seed, progress, members)
    return run_id


def resume(run_id: int, settings: Settings, *, progress: bool = False, engine: "Engine | None" = None,
           try_number: int | None = None) -> int:
    """Continue an interrupted or failed run from its last epoch checkpoint (from the store, on any host)."""
    from patentml.db import runs
    from patentml.db.engine import get_engine
    from patentml.splits import label_space

    engine = engine or get_engine(settings)
    with engine.connect() as conn:
        row = runs.get(conn, run_id)
    if row is None:
        raise DataError(f"There is no run {run_id}")
    if row.status == "succeeded":
        raise DataError(f"Run {run_id} already succeeded; nothing to resume")
    spec = parse_variant(row.variant)
    backend = spec.backend_class()(label_space(engine, row.snapshot_id, spec.dataset), row.settings)
    members = _members(engine, settings, backend, row.snapshot_id) if backend.built_from_runs else []
    device = _device(settings, backend, members)
    with engine.begin() as conn:
        runs.restart(conn, run_id, host=socket.gethostname(), pid=os.getpid(), try_number=try_number)
    _fit_and_save(engine, settings, run_id, backend, row.snapshot_id, spec, device, row.seed, progress, members)
    return run_id


def _device(settings: Settings, backend: Backend, members: list[tuple[int, Backend]]) -> str:
    """Torch threads and device when the model (or a member) runs in torch; otherwise ``cpu`` without importing it."""
    if backend.uses_torch() or any(m.uses_torch() for _, m in members):
        return configure_torch(settings)
    return "cpu"


def _members(engine: "Engine", settings: Settings, backend: Backend, snapshot_id: int) -> list[tuple[int, Backend]]:
    """The candidate member models of a blend: the given runs, or the latest run of each named variant."""
    from patentml.db import runs
    from patentml.variants.base import load_backend

    explicit = backend.params.get("member_runs")
    with engine.connect() as conn:
        if explicit:
            found = {r.run_id: r for r in runs.get_many(conn, [int(r) for r in explicit]) if r.status == "succeeded"}
            missing = [r for r in explicit if int(r) not in found]
            if missing:
                raise DataError(f"ensemble member run(s) {missing} do not exist or did not succeed")
            rows = [found[int(r)] for r in explicit]
        else:
            latest = runs.latest_succeeded(conn, backend.params["members"], snapshot_id)
            for variant in backend.params["members"]:
                if variant not in latest:
                    log.warning("ensemble: no finished %s run on snapshot %s; left out", variant, snapshot_id)
            rows = [latest[v] for v in backend.params["members"] if v in latest]
    if len(rows) < 2:
        raise DataError(f"an ensemble needs at least two finished member runs on snapshot {snapshot_id}; "
                        f"found {len(rows)}")
    return [(r.run_id, load_backend(artifact_path(engine, r.run_id, settings))) for r in rows]


def mark_stale_runs(engine: "Engine") -> int:
    """Runs left 'running' by a process of this host that no longer exists become 'interrupted'."""
    from patentml.db import runs

    with engine.begin() as conn:
        return runs.mark_stale(conn, socket.gethostname(), _alive)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fit_and_save(engine: "Engine", settings: Settings, run_id: int, backend: Backend, snapshot_id: int,
                  spec: "VariantSpec", device: str, seed: int, progress: bool,
                  members: list[tuple[int, Backend]]) -> None:
    import shutil

    from patentml.artifact import atomic_dir, write_manifest
    from patentml.db import runs
    from patentml.decision import choose_decision_rule
    from patentml.embedcache import PgEmbeddingCache
    from patentml.labels import multi_hot
    from patentml.runstore import StoreCheckpoints, upload_candidate
    from patentml.splits import SplitCorpus
    from patentml.store import open_store
    from patentml.variants.base import collect

    work_dir = settings.runs_dir / str(run_id)
    work_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    checkpoints = StoreCheckpoints(store, run_id)
    started = time.perf_counter()

    def on_epoch(e: EpochLog) -> None:
        with engine.begin() as conn:
            runs.record_epoch(conn, run_id, e)

    cache = PgEmbeddingCache(engine) if SENTENCE_VECTORS in backend.caches or members else None
    ctx = FitContext(work_dir=work_dir, device=device, seed=seed, progress=progress, cache_dir=settings.cache_dir,
                     cache_key=f"snapshot{snapshot_id}-{spec.dataset}", on_epoch=on_epoch, embedding_cache=cache,
                     members=members, on_checkpoint=checkpoints.save)
    try:
        checkpoints.restore(work_dir)  # a retry on another host (or after the work folder was lost)
        train_corpus = SplitCorpus(engine, snapshot_id, spec.dataset, "train")
        valid_corpus = SplitCorpus(engine, snapshot_id, spec.dataset, "valid")
        backend.fit(train_corpus, valid_corpus, ctx)
        train_seconds = time.perf_counter() - started
        _, texts, doc_labels = collect(valid_corpus)
        if texts:
            backend.embedding_cache = cache
            rule, valid_f1 = choose_decision_rule(multi_hot(doc_labels, backend.labels) > 0,
                                                  backend.rule_scores(texts))
            backend.decision = rule
            log.info("Decision rule chosen on validation: threshold %.2f, keep_top %s, top ratio %.1f, %s "
                     "(valid F1 %.4f)", rule.threshold, rule.keep_top, rule.top_ratio, rule.name, valid_f1)
        artifact = work_dir / ARTIFACT_DIR
        if artifact.exists():
            shutil.rmtree(artifact)
        with atomic_dir(artifact) as tmp:
            backend.save(tmp)
            write_manifest(tmp, {"run_id": run_id, "snapshot_id": snapshot_id, "variant": spec.name,
                                 "backend": backend.name})
        candidate, sha = upload_candidate(store, artifact, spec.name, run_id)
        with engine.begin() as conn:
            runs.succeed(conn, run_id, train_seconds=train_seconds, n_params=backend.n_params(),
                         artifact_dir=str(artifact), artifact_store=store.uri, artifact_id=candidate,
                         artifact_sha256=sha, decision=backend.decision.to_dict(), rule=backend.decision.name,
                         settings=backend.resolved_params())
        checkpoints.clear()
        log.info("Run %s finished in %.1f s; artifact %s in %s", run_id, train_seconds, candidate, store.uri)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        with engine.begin() as conn:
            runs.fail(conn, run_id, status, f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc(limit=8)}")
        raise


def artifact_path(engine: "Engine", run_id: int, settings: Settings | None = None) -> Path:
    """A verified local copy of a run's model, fetched from the store by id (see :func:`patentml.runstore.run_artifact`)."""
    from patentml.runstore import run_artifact

    return run_artifact(engine, run_id, settings)
