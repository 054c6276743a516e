"""Champion/challenger promotion: gather the candidates and the champion's scores, let :func:`decide` choose,
then store and verify the winner, move the ``champion`` pointer and record the decision.

Order of a promotion (DESIGN.md "Promotion"):

1. candidates: the given runs, or the latest evaluated run of each variant on the latest snapshot's
   ``full`` dataset, each with its score (its own rule) on the ``full`` test split, re-scored from
   the artifact when it was evaluated elsewhere;
2. under a Postgres advisory lock (one per store), so racing promoters serialise: read the champion
   pointer, score the champion on the same test split (re-scored from its artifact when its recorded
   score is for another snapshot), decide (:mod:`patentml.promote.decide`, a pure function);
3. if the challenger wins: upload its artifact under a new id (``put_dir`` never overwrites), read it
   back and verify every checksum, then write the ``models`` and ``promotions`` rows in the open
   transaction, move the pointer, and commit;
4. every decision, promoted or not, is a ``promotions`` row with both scores and the reason.

A failure between upload and pointer move (see ``_before_pointer_move``) rolls the transaction back
and leaves the pointer on the old champion. The uploaded model is left in the store, write-once and
verified; retrying reuses it, because the model id is derived from the run and its manifest checksum.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from patentml.exceptions import ArtifactError, DataError, PromotionError
from patentml.promote.decide import (DATASET, HEADLINES, METRICS, SPLIT, Candidate, ChampionState, Decision,
                                     best_candidate, decide, metric_label, metric_value)
from patentml.promote.upload import model_id_for, move_pointer, restore_pointer, upload_verified
from patentml.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from patentml.store import ModelStore

log = logging.getLogger(__name__)


def lock_key(store_uri: str) -> int:
    """The ``pg_advisory_xact_lock`` key that serialises promotions into one store."""
    from patentml.db import locks

    return locks.promotion(store_uri)


def score_artifact(engine: "Engine", folder: Path, snapshot_id: int, dataset: str = DATASET,
                   split: str = SPLIT) -> dict[str, Any]:
    """Score a model folder on a split under its own decision rule (across label spaces: unseen labels count)."""
    from patentml.scoring import score_model
    from patentml.splits import SplitCorpus
    from patentml.variants.base import load_backend

    scores = score_model(load_backend(folder), SplitCorpus(engine, snapshot_id, dataset, split),
                         f"{split} split of snapshot {snapshot_id} ({dataset})")
    return {**scores, "snapshot_id": snapshot_id, "dataset": dataset}


def find_candidates(engine: "Engine", settings: Settings, run_ids: Sequence[int] | None = None
                    ) -> tuple[int | None, list[Candidate]]:
    """The comparison snapshot and every challenger scored on its ``full`` test split.

    Without ``run_ids``: the latest snapshot, and the latest evaluated run per variant on it. With
    ``run_ids``: those runs, compared on the ``full`` test split of the newest snapshot among them; a
    run evaluated elsewhere (a ``subset`` run, an older snapshot, not yet evaluated) is re-scored.
    """
    from patentml.db import results, runs
    from patentml.splits import latest_snapshot

    with engine.connect() as conn:
        if run_ids is None:
            try:
                snapshot_id = latest_snapshot(engine, settings.label_scheme)
            except DataError:
                return None, []
            rows = results.run_scores(conn, snapshot_id=snapshot_id, dataset=DATASET, latest_per_variant=True)
            return snapshot_id, [Candidate(r["run_id"], r["variant"], r["snapshot_id"], r["dataset"], results.score_of(r),
                                           "run_metrics", _artifact(r["run_id"], r["artifact_dir"])) for r in rows]
        if not run_ids:
            raise PromotionError("give at least one run id, or none to consider the latest runs")
        found = {r.run_id: r for r in runs.get_many(conn, run_ids)}
        missing = [r for r in run_ids if r not in found]
        if missing:
            raise PromotionError(f"there is no run {', '.join(map(str, missing))}: see `patentml report` for runs")
        bad = [f"{r.run_id} ({r.status})" for r in found.values() if r.status != "succeeded" or not r.artifact_dir]
        if bad:
            raise PromotionError(f"run(s) {', '.join(bad)} did not succeed: only a trained model can be promoted")
        snapshot_id = max(r.snapshot_id for r in found.values())
        recorded = {r["run_id"]: results.score_of(r)
                    for r in results.run_scores(conn, list(found), snapshot_id=snapshot_id, dataset=DATASET)}
    out = []
    for r in sorted(found.values(), key=lambda r: r.run_id):
        folder = _artifact(r.run_id, r.artifact_dir)
        if r.run_id in recorded:
            out.append(Candidate(r.run_id, r.variant, r.snapshot_id, r.dataset, recorded[r.run_id], "run_metrics", folder))
        else:
            log.info("Scoring run %s on the %s test split of snapshot %s", r.run_id, DATASET, snapshot_id)
            out.append(Candidate(r.run_id, r.variant, r.snapshot_id, r.dataset,
                                 score_artifact(engine, folder, snapshot_id), "rescored", folder))
    return snapshot_id, out


def _artifact(run_id: int, artifact_dir: str | None) -> Path:
    folder = Path(artifact_dir or "")
    if not artifact_dir or not folder.is_dir():
        raise PromotionError(f"the model of run {run_id} is missing from {folder} (another machine or PATENTML_HOME?)")
    return folder


def champion_state(engine: "Engine", conn: "Connection", settings: Settings, store: "ModelStore", model_id: str,
                   snapshot_id: int) -> ChampionState:
    """The champion with its scores on ``snapshot_id``'s full test split (recorded, or re-scored now)."""
    from patentml.artifact import MANIFEST, cached_model_dir, load_json
    from patentml.db import registry, results

    champ = ChampionState(model_id)
    row = registry.model(conn, model_id)
    if row is not None:
        champ.run_id, champ.variant = row.run_id, row.variant
        recorded = ((row.metrics or {}).get("scores") or {}).get(str(snapshot_id))
        if recorded:
            champ.scores, champ.source = recorded, f"recorded for snapshot {snapshot_id}"
            return champ
        if row.run_id is not None and row.run_snapshot == snapshot_id and row.dataset == DATASET:
            scored = results.run_scores(conn, [row.run_id])
            if scored:
                champ.scores, champ.source = results.score_of(scored[0]), "run_metrics"
                return champ
    try:
        folder = cached_model_dir(store, model_id, settings.model_cache_dir, verify=True)
        manifest = load_json(folder / MANIFEST)
        champ.run_id = champ.run_id if champ.run_id is not None else manifest.get("run_id")
        champ.variant = champ.variant or manifest.get("variant")
        log.info("Re-scoring champion %s on the %s test split of snapshot %s", model_id, DATASET, snapshot_id)
        champ.scores = score_artifact(engine, folder, snapshot_id)
        champ.source = f"re-scored on snapshot {snapshot_id}"
    except ArtifactError as exc:
        champ.broken = str(exc)
        return champ
    if row is not None:
        registry.record_scores(conn, model_id, snapshot_id, champ.scores)
    return champ


@contextlib.contextmanager
def _locked(engine: "Engine", store_uri: str) -> Iterator["Connection"]:
    """A transaction holding the store's promotion lock (``pg_advisory_xact_lock``) until it ends.

    The block may commit itself (the promote path does, to restore the pointer if the commit
    fails); otherwise a normal exit commits and an exception rolls back. Either way the lock goes.
    """
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(store_uri)})
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        if conn.in_transaction():
            conn.commit()


def _commit_with_pointer(conn: "Connection", store: "ModelStore", model_id: str) -> None:
    """Move the pointer, then commit the rows written in ``conn``; a failed commit puts the old pointer back."""
    before = move_pointer(store, model_id)
    try:
        conn.commit()
    except BaseException:
        restore_pointer(store, before)
        raise


def promote(settings: Settings, run_ids: Sequence[int] | None = None, margin: float | None = None,
            metric: str | None = None, engine: "Engine | None" = None, *,
            _before_pointer_move: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Decide whether the best challenger replaces the champion, act on it, and record the decision.

    Returns ``{"promotion_id", "action" (first/promote/keep/none), "promoted", "reason", "metric",
    "margin", "snapshot_id", "store_uri", "champion_before", "champion_after", "challenger": {...},
    "champion": {...} | None, "candidates": [...]}``.

    ``_before_pointer_move(model_id)`` is a test hook called after the upload is verified and
    before the pointer moves; if it raises, nothing is recorded and the old champion stays.
    """
    from patentml.artifact import MANIFEST, file_sha256
    from patentml.db import registry
    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema
    from patentml.store import open_store

    metric = metric or settings.selection_metric
    if metric not in METRICS:
        raise PromotionError(f"selection metric {metric!r} must be one of {', '.join(METRICS)}")
    margin = settings.promotion_margin if margin is None else float(margin)
    if not 0 <= margin < 1:
        raise PromotionError(f"margin {margin} must be in [0, 1) (a difference of {metric_label(metric)})")
    engine = engine or get_engine(settings)
    ensure_schema(engine)
    store = open_store(settings)
    store.check()  # wrong credentials, missing bucket: fail before anything is decided
    snapshot_id, candidates = find_candidates(engine, settings, None if run_ids is None else list(run_ids))

    with _locked(engine, store.uri) as conn:
        current = store.get_pointer()
        champion = None if current is None or not candidates else champion_state(
            engine, conn, settings, store, current, snapshot_id)  # type: ignore[arg-type]
        decision = decide(candidates, champion or (ChampionState(current) if current else None), margin, metric,
                          snapshot_id)
        result: dict[str, Any] = {
            "action": decision.action, "reason": decision.reason, "promoted": False, "metric": metric,
            "margin": margin, "snapshot_id": snapshot_id, "store_uri": store.uri, "champion_before": current,
            "champion_after": current, "challenger_model_id": None, "challenger_run_id": None,
            "challenger_score": None, "champion_score": decision.champion_score,
            "candidates": [c.summary(metric) for c in candidates], "challenger": None,
            "champion": None if champion is None else champion.as_dict()}
        best = decision.best
        if best is not None:
            assert best.artifact is not None
            manifest_sha = file_sha256(best.artifact / MANIFEST)
            model_id = model_id_for(best.variant, best.run_id, manifest_sha)
            result.update(challenger_model_id=model_id, challenger_run_id=best.run_id,
                          challenger_score=metric_value(best.scores, metric),
                          challenger={"model_id": model_id, **best.summary(metric)})
        if not decision.promotes:
            result["promotion_id"] = registry.record_decision(conn, result)
            log.info("Promotion: keep %s. %s", current or "(none)", decision.reason)
            return result
        assert best is not None and best.artifact is not None
        upload_verified(store, model_id, best.artifact, settings)
        scores = {str(snapshot_id): {**best.scores, "snapshot_id": snapshot_id, "dataset": DATASET}}
        registry.upsert_model(conn, model_id=model_id, run_id=best.run_id, variant=best.variant,
                              snapshot_id=best.snapshot_id, store_uri=store.uri, manifest_sha256=manifest_sha,
                              scores=scores)
        result.update(promoted=True, champion_after=model_id)
        result["promotion_id"] = registry.record_decision(conn, result)
        if _before_pointer_move is not None:
            _before_pointer_move(model_id)
        _commit_with_pointer(conn, store, model_id)
    log.info("Promotion: %s -> %s. %s", current or "(none)", model_id, decision.reason)
    return result


def rollback(settings: Settings, engine: "Engine | None" = None) -> dict[str, Any]:
    """Point ``champion`` back at its previous model (verified first) and record a ``rollback`` row."""
    from patentml.artifact import cached_model_dir
    from patentml.db import registry
    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema
    from patentml.store import open_store

    engine = engine or get_engine(settings)
    ensure_schema(engine)
    store = open_store(settings)
    with _locked(engine, store.uri) as conn:
        info = store.pointer_info()
        if info is None:
            raise PromotionError(f"{store.uri} has no champion yet: nothing to roll back")
        current, previous = info["model_id"], info.get("previous")
        if not previous:
            raise PromotionError(f"champion {current} in {store.uri} has no previous champion to roll back to")
        if not store.exists(previous):
            raise PromotionError(f"the previous champion {previous} is no longer in {store.uri}: cannot roll back")
        try:
            cached_model_dir(store, previous, settings.model_cache_dir, verify=True)
        except ArtifactError as exc:
            raise PromotionError(f"the previous champion {previous} does not verify ({exc}): not rolling back") from exc
        record = {"action": "rollback", "promoted": False, "challenger_model_id": previous,
                  "challenger_run_id": registry.run_of_model(conn, previous), "champion_before": current,
                  "champion_after": previous, "metric": settings.selection_metric, "challenger_score": None,
                  "champion_score": None, "margin": settings.promotion_margin, "snapshot_id": None,
                  "store_uri": store.uri,
                  "reason": f"rollback requested: champion {current} replaced by the previous champion {previous}"}
        record["promotion_id"] = registry.record_decision(conn, record)
        _commit_with_pointer(conn, store, previous)
    log.info("Rollback: %s -> %s", current, previous)
    return record


def decision_as_text(result: dict[str, Any]) -> str:
    """One line for the CLI."""
    return f"{HEADLINES[result['action']]}: {result['reason']} [champion now: {result['champion_after'] or '(none)'}]"


from patentml.promote.listing import list_models  # noqa: E402 - listing reads this module's helpers

__all__ = ["Candidate", "ChampionState", "Decision", "best_candidate", "decide", "decision_as_text",
           "find_candidates", "list_models", "lock_key", "model_id_for", "promote", "rollback", "score_artifact",
           "upload_verified"]
