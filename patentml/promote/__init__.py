"""Champion/challenger promotion: gather the candidates and the champion's scores, let :func:`decide` choose,
then store and verify the winner, move the ``champion`` pointer and record the decision.

Order of a promotion (DESIGN.md "Promotion"):

1. candidates: the given runs, or the latest evaluated run of each variant on the latest snapshot's
   ``full`` dataset, each with its score (its own rule) on the ``full`` test split, re-scored from
   its artifact (fetched from the store by id) when it was evaluated elsewhere;
2. under the store's promotion lock (:func:`patentml.promote.state.store_lock`, no transaction
   open while it is held): make the pointer agree with the registry, load the champion (one that
   cannot be loaded for any reason is replaced, the reason recorded) and score it on the same test
   split, decide (:mod:`patentml.promote.decide`, a pure function);
3. if the challenger wins: fetch its candidate artifact, upload it under ``models/<id>`` (write-once;
   an interrupted earlier upload is replaced, a complete one reused), read it back and verify every
   checksum, then in one short transaction write the ``models`` and ``promotions`` rows, move the
   pointer (a compare-and-swap carrying the manifest's sha256) and commit;
4. every decision, promoted or not, is a ``promotions`` row with both scores and the reason.

``hold=True`` stops after step 3's upload (nothing recorded, the pointer unmoved) so that a person
can approve; :func:`promote` with ``expect`` then applies it only if the same decision still holds,
and :func:`reject` records a refusal.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

from patentml.exceptions import DataError, PromotionError
from patentml.promote.decide import (DATASET, HEADLINES, METRICS, Candidate, ChampionState, Decision,
                                     best_candidate, decide, metric_label, metric_value)
from patentml.promote.state import champion_state, reconcile_pointer, score_backend, store_lock
from patentml.promote.upload import model_id_for, move_pointer, restore_pointer, upload_verified
from patentml.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.engine import Connection, Engine

    from patentml.store import ModelStore

log = logging.getLogger(__name__)


def lock_key(store_uri: str) -> int:
    """The advisory-lock key that serialises promotions into one store."""
    from patentml.db import locks

    return locks.promotion(store_uri)


def score_artifact(engine: "Engine", folder: "Path", snapshot_id: int) -> dict[str, Any]:
    """Score a model folder on a snapshot's full test split under its own decision rule."""
    from patentml.variants.base import load_backend

    return score_backend(engine, load_backend(folder), snapshot_id)


def find_candidates(engine: "Engine", settings: Settings, run_ids: Sequence[int] | None = None
                    ) -> tuple[int | None, list[Candidate]]:
    """The comparison snapshot and every challenger scored on its ``full`` test split.

    Without ``run_ids``: the latest snapshot, and the latest evaluated run per variant on it. With
    ``run_ids``: those runs, compared on the ``full`` test split of the newest snapshot among them; a
    run evaluated elsewhere (a ``subset`` run, an older snapshot, not yet evaluated) is re-scored.
    """
    from patentml.db import results, runs
    from patentml.runstore import run_artifact
    from patentml.splits import latest_snapshot

    with engine.connect() as conn:
        if run_ids is None:
            try:
                snapshot_id = latest_snapshot(engine, settings.label_scheme)
            except DataError:
                return None, []
            rows = results.run_scores(conn, snapshot_id=snapshot_id, dataset=DATASET, latest_per_variant=True)
            found = {r.run_id: r for r in runs.get_many(conn, [r["run_id"] for r in rows])}
            return snapshot_id, [Candidate(r["run_id"], r["variant"], r["snapshot_id"], r["dataset"], results.score_of(r),
                                           "run_metrics", manifest_sha256=found[r["run_id"]].artifact_sha256)
                                 for r in rows if _has_model(found[r["run_id"]])]
        if not run_ids:
            raise PromotionError("give at least one run id, or none to consider the latest runs")
        found = {r.run_id: r for r in runs.get_many(conn, run_ids)}
        missing = [r for r in run_ids if r not in found]
        if missing:
            raise PromotionError(f"there is no run {', '.join(map(str, missing))}: see `patentml report` for runs")
        bad = [f"{r.run_id} ({r.status})" for r in found.values() if not _has_model(r)]
        if bad:
            raise PromotionError(f"run(s) {', '.join(bad)} did not succeed: only a trained model can be promoted")
        snapshot_id = max(r.snapshot_id for r in found.values())
        recorded = {r["run_id"]: results.score_of(r)
                    for r in results.run_scores(conn, list(found), snapshot_id=snapshot_id, dataset=DATASET)}
    out = []
    for r in sorted(found.values(), key=lambda r: r.run_id):
        if r.run_id in recorded:
            out.append(Candidate(r.run_id, r.variant, r.snapshot_id, r.dataset, recorded[r.run_id], "run_metrics",
                                 manifest_sha256=r.artifact_sha256))
        else:
            log.info("Scoring run %s on the %s test split of snapshot %s", r.run_id, DATASET, snapshot_id)
            folder = run_artifact(engine, r.run_id, settings)
            out.append(Candidate(r.run_id, r.variant, r.snapshot_id, r.dataset,
                                 score_artifact(engine, folder, snapshot_id), "rescored", folder, r.artifact_sha256))
    return snapshot_id, out


def _has_model(row: Any) -> bool:
    return row.status == "succeeded" and bool(row.artifact_id or row.artifact_dir)


def _model_id(engine: "Engine", settings: Settings, best: Candidate) -> str:
    """The id the challenger gets in ``models/``: from the run row's manifest checksum, else its artifact."""
    from patentml.artifact import MANIFEST, file_sha256
    from patentml.runstore import run_artifact

    if best.manifest_sha256 is None:  # a run trained before runs recorded it
        best.artifact = best.artifact or run_artifact(engine, best.run_id, settings)
        best.manifest_sha256 = file_sha256(best.artifact / MANIFEST)
    return model_id_for(best.variant, best.run_id, best.manifest_sha256)


def _commit_with_pointer(conn: "Connection", store: "ModelStore", model_id: str, sha256: str) -> None:
    """Move the pointer, then commit the rows written in ``conn``; a failed commit puts the old pointer back."""
    before = move_pointer(store, model_id, sha256)
    try:
        conn.commit()
    except BaseException:
        restore_pointer(store, before, model_id)
        raise


def _result(decision: Decision, metric: str, margin: float, snapshot_id: int | None, store: "ModelStore",
            current: str | None, candidates: list[Candidate], champion: ChampionState | None) -> dict[str, Any]:
    return {"action": decision.action, "reason": decision.reason, "promoted": False, "pending": False, "metric": metric,
            "margin": margin, "snapshot_id": snapshot_id, "store_uri": store.uri, "champion_before": current,
            "champion_after": current, "challenger_model_id": None, "challenger_run_id": None,
            "challenger_score": None, "champion_score": decision.champion_score,
            "candidates": [c.summary(metric) for c in candidates], "challenger": None,
            "champion": None if champion is None else champion.as_dict()}


def promote(settings: Settings, run_ids: Sequence[int] | None = None, margin: float | None = None,
            metric: str | None = None, engine: "Engine | None" = None, *, hold: bool = False,
            expect: dict[str, Any] | None = None,
            _before_pointer_move: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Decide whether the best challenger replaces the champion, act on it, and record the decision.

    Returns ``{"promotion_id", "action" (first/promote/keep/none), "promoted", "pending", "reason",
    "metric", "margin", "snapshot_id", "store_uri", "champion_before", "champion_after", "challenger":
    {...}, "champion": {...} | None, "candidates": [...], "repaired"}``.

    ``hold``: a winner is uploaded and verified but not applied or recorded (``pending``, no
    ``promotion_id``). ``expect`` (a held result's ``champion_before`` and ``challenger_model_id``):
    apply only that promotion; if the decision changed meanwhile it is recorded as a ``keep``.
    ``_before_pointer_move(model_id)`` is a test hook called after the upload is verified and
    before the pointer moves; if it raises, nothing is recorded and the old champion stays.
    """
    from patentml.db import registry
    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema
    from patentml.runstore import run_artifact
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

    with store_lock(engine, store.uri):
        repaired = reconcile_pointer(engine, store)
        pointer = store.pointer_info()
        current = None if pointer is None else pointer["model_id"]
        champion = None if pointer is None or not candidates else champion_state(
            engine, settings, store, pointer, snapshot_id)  # type: ignore[arg-type]
        decision = decide(candidates, champion or (ChampionState(current) if current else None), margin, metric,
                          snapshot_id)
        result = _result(decision, metric, margin, snapshot_id, store, current, candidates, champion)
        result["repaired"] = repaired
        best = decision.best
        model_id = None
        if best is not None:
            model_id = _model_id(engine, settings, best)
            result.update(challenger_model_id=model_id, challenger_run_id=best.run_id,
                          challenger_score=metric_value(best.scores, metric),
                          challenger={"model_id": model_id, **best.summary(metric)})
        if expect is not None and decision.promotes and (current, model_id) != (
                expect.get("champion_before"), expect.get("challenger_model_id")):
            decision = Decision("keep", f"the approved promotion of {expect.get('challenger_model_id')} over "
                                        f"{expect.get('champion_before') or '(none)'} no longer holds: now {decision.reason}",
                                best, decision.champion_score)
            result.update(action="keep", reason=decision.reason)
        if not decision.promotes:
            with engine.begin() as conn:
                result["promotion_id"] = registry.record_decision(conn, result)
            log.info("Promotion: keep %s. %s", current or "(none)", decision.reason)
            return result
        assert best is not None and model_id is not None
        local = best.artifact or run_artifact(engine, best.run_id, settings)
        manifest_sha = best.manifest_sha256
        upload_verified(store, model_id, local, settings)
        if hold:
            result.update(pending=True)
            log.info("Promotion held for approval: %s -> %s. %s", current or "(none)", model_id, decision.reason)
            return result
        scores = {str(snapshot_id): {**best.scores, "snapshot_id": snapshot_id, "dataset": DATASET}}
        result.update(promoted=True, champion_after=model_id)
        with engine.connect() as conn:
            registry.upsert_model(conn, model_id=model_id, run_id=best.run_id, variant=best.variant,
                                  snapshot_id=best.snapshot_id, store_uri=store.uri, manifest_sha256=manifest_sha,
                                  scores=scores)
            result["promotion_id"] = registry.record_decision(conn, result)
            if _before_pointer_move is not None:
                _before_pointer_move(model_id)
            _commit_with_pointer(conn, store, model_id, manifest_sha)
    log.info("Promotion: %s -> %s. %s", current or "(none)", model_id, decision.reason)
    return result


def reject(settings: Settings, held: dict[str, Any], by: str, engine: "Engine | None" = None) -> dict[str, Any]:
    """Record that a person refused a held promotion: a ``keep`` row naming who, the pointer unmoved."""
    from patentml.db import registry
    from patentml.db.engine import get_engine

    engine = engine or get_engine(settings)
    record = {**held, "action": "keep", "promoted": False, "pending": False,
              "champion_after": held.get("champion_before"),
              "reason": f"approval refused by {by}: {held.get('reason')}"}
    with engine.begin() as conn:
        record["promotion_id"] = registry.record_decision(conn, record)
    log.info("Promotion of %s refused by %s", held.get("challenger_model_id"), by)
    return record


def rollback(settings: Settings, engine: "Engine | None" = None) -> dict[str, Any]:
    """Point ``champion`` back at its previous model (verified first) and record a ``rollback`` row."""
    from patentml.db import registry
    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema
    from patentml.promote.state import load_champion
    from patentml.store import open_store

    engine = engine or get_engine(settings)
    ensure_schema(engine)
    store = open_store(settings)
    with store_lock(engine, store.uri):
        reconcile_pointer(engine, store)
        info = store.pointer_info()
        if info is None:
            raise PromotionError(f"{store.uri} has no champion yet: nothing to roll back")
        current, previous = info["model_id"], info.get("previous")
        if not previous:
            raise PromotionError(f"champion {current} in {store.uri} has no previous champion to roll back to")
        with engine.connect() as conn:
            row = registry.model(conn, previous)
            run_id = registry.run_of_model(conn, previous)
        sha = row.manifest_sha256 if row is not None else None
        _, _, problem = load_champion(store, settings, previous, sha)
        if problem is not None:
            raise PromotionError(f"the previous champion {previous} cannot be loaded ({problem}): not rolling back")
        record = {"action": "rollback", "promoted": False, "challenger_model_id": previous,
                  "challenger_run_id": run_id, "champion_before": current,
                  "champion_after": previous, "metric": settings.selection_metric, "challenger_score": None,
                  "champion_score": None, "margin": settings.promotion_margin, "snapshot_id": None,
                  "store_uri": store.uri,
                  "reason": f"rollback requested: champion {current} replaced by the previous champion {previous}"}
        with engine.connect() as conn:
            record["promotion_id"] = registry.record_decision(conn, record)
            _commit_with_pointer(conn, store, previous, sha)  # type: ignore[arg-type]
    log.info("Rollback: %s -> %s", current, previous)
    return record


def decision_as_text(result: dict[str, Any]) -> str:
    """One line for the CLI."""
    head = "HELD for approval" if result.get("pending") else HEADLINES[result["action"]]
    return f"{head}: {result['reason']} [champion now: {result['champion_after'] or '(none)'}]"


from patentml.promote.listing import list_models  # noqa: E402 - listing reads this module's helpers

__all__ = ["Candidate", "ChampionState", "Decision", "best_candidate", "decide", "decision_as_text",
           "find_candidates", "list_models", "lock_key", "model_id_for", "promote", "reject", "rollback",
           "score_artifact", "upload_verified"]
