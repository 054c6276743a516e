"""Champion/challenger promotion: pick the best challenger, score the champion on the same test split,
store and verify the winner, then move the ``champion`` pointer and record the decision.

Order of a promotion (DESIGN.md "Promotion"):

1. candidates: the given runs, or the latest succeeded + evaluated run of each variant on the
   latest snapshot's ``full`` dataset; each is scored on the ``full`` test split under the rule its
   artifact applies (``tuned``); the best by the selection metric (example F1, ties by P@1) wins;
2. under a Postgres advisory lock (one per store), so racing promoters serialise: read the
   champion pointer, score the champion on the same test split (re-scored from its artifact when
   its recorded score is for another snapshot), decide;
3. if the challenger wins by the margin: upload its artifact under a new id (``put_dir`` never
   overwrites), read it back into a temp folder and verify every checksum, then move the pointer
   and commit the ``models`` and ``promotions`` rows (rows are written first in the open
   transaction, the pointer is moved, then the transaction commits);
4. every decision, promoted or not, is a ``promotions`` row with both scores and the reason.

A failure between upload and pointer move (see ``_before_pointer_move``) rolls the transaction
back and leaves the pointer on the old champion. The uploaded model is left in the store: it is
write-once, complete and verified, but no pointer names it and no ``models`` row lists it
(``patentml models list`` shows it as unregistered). Retrying the promotion reuses it after
verifying it again, because the model id is derived from the run and its manifest checksum.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from patentml.exceptions import ArtifactError, DataError, PromotionError
from patentml.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from patentml.store import ModelStore

log = logging.getLogger(__name__)

METRICS = ("example_f1", "p_at_1")
#: The dataset whose test split decides promotions (the paper's USPTO-2M).
DATASET = "full"
SPLIT = "test"
#: Float noise below this is a tie.
EPS = 1e-9


# --- small helpers ------------------------------------------------------------------------------


def lock_key(store_uri: str) -> int:
    """The ``pg_advisory_xact_lock`` key that serialises promotions into one store."""
    from patentml.db import locks

    return locks.promotion(store_uri)


def artifact_rule(decision: dict[str, Any] | None) -> str:
    """The ``run_metrics.rule`` row that matches what an artifact's decision rule does at prediction time."""
    if not decision:
        return "t0.5"
    if decision.get("per_label") and decision.get("use_per_label"):
        return "per_label"
    return "t0.5" if decision.get("name") == "t0.5" else "tuned"


def model_id_for(variant: str, run_id: int, manifest_sha256: str) -> str:
    """``<variant>-r<run>-<first 8 hex of the manifest's sha256>``: stable for one artifact, new for any change."""
    return f"{variant}-r{run_id}-{manifest_sha256[:8]}"


def _metric_value(scores: dict[str, Any], metric: str) -> float:
    return float(scores["f1"] if metric == "example_f1" else scores["p_at_1"])


def _rank_key(scores: dict[str, Any], metric: str) -> tuple[float, float]:
    """Primary metric, then the other one as the tie-break (example F1 ties go to P@1)."""
    other = "p_at_1" if metric == "example_f1" else "example_f1"
    return (_metric_value(scores, metric), _metric_value(scores, other))


def _label(metric: str) -> str:
    return "example F1" if metric == "example_f1" else "P@1"


@dataclass
class Candidate:
    """A challenger: a run, its artifact, and its scores on the comparison test split."""

    run_id: int
    variant: str
    snapshot_id: int
    dataset: str
    artifact: Path
    rule: str
    scores: dict[str, Any]
    #: Where the scores come from: ``run_metrics`` or ``rescored``.
    source: str

    def summary(self, metric: str) -> dict[str, Any]:
        return {"run_id": self.run_id, "variant": self.variant, "snapshot_id": self.snapshot_id,
                "dataset": self.dataset, "rule": self.rule, "score": _metric_value(self.scores, metric),
                "f1": self.scores["f1"], "p_at_1": self.scores["p_at_1"], "scores_from": self.source}


@dataclass
class Champion:
    model_id: str
    run_id: int | None = None
    variant: str | None = None
    scores: dict[str, Any] | None = None
    source: str = ""
    #: Set when the champion's artifact cannot be loaded (corrupted, incomplete): it is replaced.
    broken: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- scoring ------------------------------------------------------------------------------------


def score_artifact(engine: "Engine", folder: Path, snapshot_id: int, dataset: str = DATASET,
                   split: str = SPLIT) -> dict[str, Any]:
    """Score a model folder on a split under its own decision rule: example P/R/F1 and P@1.

    Works across label spaces: the truth holds every test label (the model's labels plus the ones
    it never saw), so a model trained on an older snapshot is judged on the patents' true labels.
    """
    import numpy as np

    from patentml.evaluate import truth_matrix
    from patentml.metrics import at_k, example_prf
    from patentml.splits import iter_split
    from patentml.variants.base import load_backend

    backend = load_backend(folder)
    texts, doc_labels = [], []
    for _, abstract, labels in iter_split(engine, snapshot_id, dataset, split):
        texts.append(abstract)
        doc_labels.append(labels)
    if not texts:
        raise DataError(f"the {split} split of snapshot {snapshot_id} ({dataset}) is empty: nothing to score on")
    scores = backend.predict_scores(texts)
    truth, names = truth_matrix(doc_labels, backend.labels)
    pred = np.zeros(truth.shape, dtype=bool)
    pred[:, : scores.shape[1]] = backend.decision.apply(scores)
    full_scores = np.zeros(truth.shape, dtype=np.float32)
    full_scores[:, : scores.shape[1]] = scores
    ex = example_prf(truth, pred)
    k = at_k(truth, full_scores, (1,))
    return {"f1": float(ex["f1"]), "precision": float(ex["precision"]), "recall": float(ex["recall"]),
            "p_at_1": float(k["p@1"]), "n_patents": len(texts), "n_unseen_labels": len(names) - len(backend.labels),
            "rule": backend.decision.name, "snapshot_id": snapshot_id, "dataset": dataset}


def _run_rows(conn: "Connection", run_ids: Sequence[int] | None, snapshot_id: int | None) -> list[Any]:
    from sqlalchemy import text

    if run_ids is not None:
        rows = conn.execute(
            text("SELECT run_id, variant, dataset, snapshot_id, status, artifact_dir, decision_rule FROM runs "
                 "WHERE run_id = ANY(:ids) ORDER BY run_id"),
            {"ids": list(run_ids)},
        ).all()
        found = {r.run_id for r in rows}
        missing = [r for r in run_ids if r not in found]
        if missing:
            raise PromotionError(f"there is no run {', '.join(map(str, missing))}: see `patentml report` for runs")
        bad = [f"{r.run_id} ({r.status})" for r in rows if r.status != "succeeded" or not r.artifact_dir]
        if bad:
            raise PromotionError(f"run(s) {', '.join(bad)} did not succeed: only a trained model can be promoted")
        return list(rows)
    # The latest succeeded run of each variant on this snapshot's full dataset that has test metrics.
    return list(conn.execute(
        text(
            """
            SELECT DISTINCT ON (r.variant) r.run_id, r.variant, r.dataset, r.snapshot_id, r.status,
                   r.artifact_dir, r.decision_rule
            FROM runs r
            WHERE r.status = 'succeeded' AND r.dataset = :d AND r.snapshot_id = :s AND r.artifact_dir IS NOT NULL
              AND EXISTS (SELECT 1 FROM run_metrics m WHERE m.run_id = r.run_id AND m.split = :split)
            ORDER BY r.variant, r.run_id DESC
            """
        ),
        {"d": DATASET, "s": snapshot_id, "split": SPLIT},
    ).all())


def _recorded_scores(conn: "Connection", run_id: int, rule: str) -> dict[str, Any] | None:
    from sqlalchemy import text

    row = conn.execute(
        text("SELECT rule, f1, precision, recall, p_at_1, n_patents, n_unseen_labels FROM run_metrics "
             "WHERE run_id = :r AND split = :s AND rule = ANY(:rules) "
             "ORDER BY array_position(CAST(:rules AS text[]), rule::text) LIMIT 1"),
        {"r": run_id, "s": SPLIT, "rules": [rule, "tuned", "t0.5"]},
    ).one_or_none()
    if row is None:
        return None
    return {"f1": row.f1, "precision": row.precision, "recall": row.recall, "p_at_1": row.p_at_1,
            "n_patents": row.n_patents, "n_unseen_labels": row.n_unseen_labels, "rule": row.rule}


def find_candidates(engine: "Engine", settings: Settings, run_ids: Sequence[int] | None = None
                    ) -> tuple[int | None, list[Candidate]]:
    """The comparison snapshot and every challenger scored on its ``full`` test split.

    Without ``run_ids``: the latest snapshot, and the latest evaluated run per variant on it.
    With ``run_ids``: those runs, compared on the ``full`` test split of the newest snapshot among
    them; a run evaluated elsewhere (a ``subset`` run, an older snapshot, not yet evaluated) is
    re-scored from its artifact on that split.
    """
    from patentml.splits import latest_snapshot

    with engine.connect() as conn:
        if run_ids is None:
            try:
                snapshot_id: int | None = latest_snapshot(engine, settings.label_scheme)
            except DataError:
                return None, []
            rows = _run_rows(conn, None, snapshot_id)
        else:
            if not run_ids:
                raise PromotionError("give at least one run id, or none to consider the latest runs")
            rows = _run_rows(conn, run_ids, None)
            snapshot_id = max(r.snapshot_id for r in rows)
        plan = []
        for r in rows:
            rule = artifact_rule(r.decision_rule)
            recorded = None
            if r.snapshot_id == snapshot_id and r.dataset == DATASET:
                recorded = _recorded_scores(conn, r.run_id, rule)
            plan.append((r, rule, recorded))
    out = []
    for r, rule, recorded in plan:
        folder = Path(r.artifact_dir)
        if not folder.is_dir():
            raise PromotionError(
                f"the model of run {r.run_id} is missing from {folder} (another machine or PATENTML_HOME?)"
            )
        if recorded is not None:
            out.append(Candidate(r.run_id, r.variant, r.snapshot_id, r.dataset, folder, recorded["rule"], recorded,
                                 "run_metrics"))
        else:
            log.info("Scoring run %s on the %s test split of snapshot %s", r.run_id, DATASET, snapshot_id)
            scores = score_artifact(engine, folder, snapshot_id)
            out.append(Candidate(r.run_id, r.variant, r.snapshot_id, r.dataset, folder, rule, scores, "rescored"))
    return snapshot_id, out


def best_candidate(candidates: Sequence[Candidate], metric: str) -> Candidate:
    """Highest metric, ties by the other metric, then the oldest run: a blend that kept a single member
    scores exactly as that member and must not replace it with a wrapper."""
    return max(candidates, key=lambda c: (*_rank_key(c.scores, metric), -c.run_id))


# --- the champion -------------------------------------------------------------------------------


def _cache_root(settings: Settings) -> Path:
    return settings.cache_dir / "models"


def _champion(engine: "Engine", conn: "Connection", settings: Settings, store: "ModelStore", model_id: str,
              snapshot_id: int) -> Champion:
    """The champion with its scores on ``snapshot_id``'s full test split (recorded, or re-scored now)."""
    from sqlalchemy import text

    from patentml.artifact import cached_model_dir, load_json

    champ = Champion(model_id)
    row = conn.execute(
        text("SELECT m.run_id, m.variant, m.metrics, r.snapshot_id AS run_snapshot, r.dataset, r.decision_rule "
             "FROM models m LEFT JOIN runs r USING (run_id) WHERE m.model_id = :m"),
        {"m": model_id},
    ).one_or_none()
    key = str(snapshot_id)
    if row is not None:
        champ.run_id, champ.variant = row.run_id, row.variant
        recorded = ((row.metrics or {}).get("scores") or {}).get(key)
        if recorded:
            champ.scores, champ.source = recorded, f"recorded for snapshot {snapshot_id}"
            return champ
        if row.run_id is not None and row.run_snapshot == snapshot_id and row.dataset == DATASET:
            recorded = _recorded_scores(conn, row.run_id, artifact_rule(row.decision_rule))
            if recorded:
                champ.scores, champ.source = recorded, "run_metrics"
                return champ
    try:
        folder = cached_model_dir(store, model_id, _cache_root(settings), verify=True)
        manifest = load_json(folder / "manifest.json")
        champ.run_id = champ.run_id if champ.run_id is not None else manifest.get("run_id")
        champ.variant = champ.variant or manifest.get("variant")
        log.info("Re-scoring champion %s on the %s test split of snapshot %s", model_id, DATASET, snapshot_id)
        champ.scores = score_artifact(engine, folder, snapshot_id)
        champ.source = f"re-scored on snapshot {snapshot_id}"
    except ArtifactError as exc:
        champ.broken = str(exc)
        return champ
    if row is not None:
        conn.execute(
            text("UPDATE models SET metrics = jsonb_set(CASE WHEN metrics ? 'scores' THEN metrics "
                 "ELSE metrics || '{\"scores\": {}}'::jsonb END, ARRAY['scores', :k], CAST(:v AS jsonb)) "
                 "WHERE model_id = :m"),
            {"k": key, "v": json.dumps(champ.scores), "m": model_id},
        )
    return champ


# --- upload and verification --------------------------------------------------------------------


def upload_verified(store: "ModelStore", model_id: str, local: Path, settings: Settings) -> dict[str, Any]:
    """Put ``local`` into the store as ``model_id`` (or reuse an identical earlier upload), then read it
    back and verify every checksum. Returns the manifest. The verified copy becomes the local cache."""
    from patentml.artifact import atomic_dir, file_sha256, verify_artifact

    local_manifest = verify_artifact(local)  # a corrupted local artifact is refused before any upload
    local_sha = file_sha256(local / "manifest.json")
    if store.exists(model_id):
        log.info("Model %s is already in %s (an earlier upload): verifying it", model_id, store.uri)
    else:
        log.info("Uploading %s to %s", model_id, store.uri)
        store.put_dir(model_id, local)
    root = _ensure(_cache_root(settings))
    final = root / model_id

    def read_back(folder: Path) -> None:
        store.get_dir(model_id, folder)
        verify_artifact(folder)
        if file_sha256(folder / "manifest.json") != local_sha:
            raise ArtifactError(
                f"model {model_id} in {store.uri} has a different manifest than the run's artifact {local}"
            )

    try:
        if (final / "manifest.json").is_file():
            with tempfile.TemporaryDirectory(prefix=f".verify-{model_id}-", dir=root) as tmp:
                read_back(Path(tmp))
        else:  # the verified copy becomes the local cache entry (renamed into place only if it verifies)
            with atomic_dir(final, exist_ok=True) as tmp_dir:
                read_back(tmp_dir)
    except ArtifactError as exc:
        raise PromotionError(
            f"model {model_id} read back from {store.uri} does not verify ({exc}); the champion pointer was "
            "not moved. Remove the broken upload with ModelStore.delete_model and promote again"
        ) from exc
    return local_manifest


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- recording ----------------------------------------------------------------------------------


def _record(conn: "Connection", **row: Any) -> int:
    from sqlalchemy import text

    return int(conn.execute(
        text(
            "INSERT INTO promotions (action, promoted, challenger_model_id, challenger_run_id, champion_before, "
            "champion_after, metric, challenger_score, champion_score, margin, snapshot_id, store_uri, reason) "
            "VALUES (:action, :promoted, :challenger_model_id, :challenger_run_id, :champion_before, "
            ":champion_after, :metric, :challenger_score, :champion_score, :margin, :snapshot_id, :store_uri, "
            ":reason) RETURNING promotion_id"
        ),
        row,
    ).scalar_one())


def _insert_model(conn: "Connection", model_id: str, cand: Candidate, snapshot_id: int, store_uri: str,
                  manifest_sha: str, metric_doc: dict[str, Any]) -> None:
    from sqlalchemy import text

    scores = {str(snapshot_id): {**cand.scores, "snapshot_id": snapshot_id, "dataset": DATASET}}
    conn.execute(
        text("INSERT INTO models (model_id, run_id, variant, snapshot_id, store_uri, manifest_sha256, metrics) "
             "VALUES (:m, :r, :v, :s, :u, :h, CAST(:x AS jsonb)) ON CONFLICT (model_id) DO UPDATE SET "
             "metrics = models.metrics || jsonb_build_object('scores', "
             "COALESCE(models.metrics -> 'scores', '{}'::jsonb) || (excluded.metrics -> 'scores'))"),
        {"m": model_id, "r": cand.run_id, "v": cand.variant, "s": cand.snapshot_id, "u": store_uri,
         "h": manifest_sha, "x": json.dumps({"test": metric_doc, "scores": scores, "rule": cand.rule})},
    )


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


def _move_pointer(store: "ModelStore", model_id: str) -> tuple[dict[str, Any], str | None]:
    from patentml.store import CHAMPION, POINTERS

    before = store.read_text(f"{POINTERS}/{CHAMPION}.json")
    return store.set_pointer(CHAMPION, model_id), before


def _restore_pointer(store: "ModelStore", before: str | None) -> None:
    """Best effort after a failed commit: put the old pointer document back."""
    from patentml.store import CHAMPION, POINTERS

    if before is None:
        log.error("The registry commit failed after the champion pointer was set; no earlier pointer to restore")
        return
    try:
        store.write_text(f"{POINTERS}/{CHAMPION}.json", before)
    except Exception:  # the commit error is the one to report
        log.exception("Could not restore the champion pointer after a failed registry commit")


# --- promote ------------------------------------------------------------------------------------


def promote(
    settings: Settings,
    run_ids: Sequence[int] | None = None,
    margin: float | None = None,
    metric: str | None = None,
    engine: "Engine | None" = None,
    *,
    _before_pointer_move: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Decide whether the best challenger replaces the champion, act on it, and record the decision.

    Returns ``{"promotion_id", "action" (first/promote/keep/none), "promoted", "reason", "metric",
    "margin", "snapshot_id", "store_uri", "champion_before", "champion_after", "challenger": {...},
    "champion": {...} | None, "candidates": [...]}``.

    ``_before_pointer_move(model_id)`` is a test hook called after the upload is verified and
    before the pointer moves; if it raises, nothing is recorded and the old champion stays.
    """
    from patentml.artifact import file_sha256, load_json
    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema
    from patentml.store import open_store

    metric = metric or settings.selection_metric
    if metric not in METRICS:
        raise PromotionError(f"selection metric {metric!r} must be one of {', '.join(METRICS)}")
    margin = settings.promotion_margin if margin is None else float(margin)
    if not 0 <= margin < 1:
        raise PromotionError(f"margin {margin} must be in [0, 1) (a difference of {_label(metric)})")
    engine = engine or get_engine(settings)
    ensure_schema(engine)
    store = open_store(settings)
    store.check()  # wrong credentials, missing bucket: fail before anything is decided

    snapshot_id, candidates = find_candidates(engine, settings, None if run_ids is None else list(run_ids))
    base: dict[str, Any] = {"metric": metric, "margin": margin, "snapshot_id": snapshot_id, "store_uri": store.uri,
                            "candidates": [c.summary(metric) for c in candidates]}

    with _locked(engine, store.uri) as conn:
        current = store.get_pointer()
        record: dict[str, Any] = {"metric": metric, "margin": margin, "snapshot_id": snapshot_id,
                                  "store_uri": store.uri, "champion_before": current, "champion_after": current,
                                  "challenger_model_id": None, "challenger_run_id": None,
                                  "challenger_score": None, "champion_score": None, "promoted": False}
        if not candidates:
            where = "no snapshot yet" if snapshot_id is None else f"snapshot {snapshot_id}"
            reason = (f"no challenger: no succeeded, evaluated run of a {DATASET} variant on {where}; "
                      f"champion stays {current or '(none)'}")
            record.update(action="none", reason=reason)
            record["promotion_id"] = _record(conn, **record)
            log.info("Promotion: %s", reason)
            return {**base, **record, "challenger": None, "champion": None}
        assert snapshot_id is not None
        best = best_candidate(candidates, metric)
        local = best.artifact
        manifest_sha = file_sha256(local / "manifest.json")
        model_id = model_id_for(best.variant, best.run_id, manifest_sha)
        challenger_score = _metric_value(best.scores, metric)
        record.update(challenger_model_id=model_id, challenger_run_id=best.run_id, challenger_score=challenger_score)
        others = [c for c in candidates if c is not best]
        picked = f"run {best.run_id} ({best.variant}) {_label(metric)} {challenger_score:.4f}"
        if others:
            picked += " beat " + ", ".join(
                f"run {c.run_id} ({c.variant}) {_metric_value(c.scores, metric):.4f}" for c in others)
        where = f"the {DATASET} test split of snapshot {snapshot_id}"

        champion: Champion | None = None
        if current is not None:
            champion = _champion(engine, conn, settings, store, current, snapshot_id)
        if champion is None:
            action = "first"
            reason = f"first champion: {picked} on {where}"
        elif champion.broken:
            action = "promote"
            reason = (f"{picked} on {where}; the current champion {current} cannot be loaded "
                      f"({champion.broken}), so it is replaced")
        else:
            assert champion.scores is not None
            champion_score = _metric_value(champion.scores, metric)
            record["champion_score"] = champion_score
            diff = challenger_score - champion_score
            versus = (f"{picked}; champion {current} {_label(metric)} {champion_score:.4f} "
                      f"({champion.source}) on {where}: difference {diff:+.4f}, margin {margin:.4f}")
            if current == model_id or (champion.run_id is not None and champion.run_id == best.run_id):
                action, reason = "keep", f"run {best.run_id} is already the champion ({current}); {versus}"
            elif abs(diff) <= EPS:
                action, reason = "keep", f"tie, the champion stays: {versus}"
            elif diff > EPS and diff >= margin - EPS:
                action, reason = "promote", f"challenger wins by at least the margin: {versus}"
            elif diff > 0:
                action, reason = "keep", f"challenger better but by less than the margin, the champion stays: {versus}"
            else:
                action, reason = "keep", f"champion is better, it stays: {versus}"
        record.update(action=action, reason=reason)
        champion_doc = None if champion is None else {
            "model_id": champion.model_id, "run_id": champion.run_id, "variant": champion.variant,
            "scores": champion.scores, "scores_from": champion.source, "broken": champion.broken}
        if action == "keep":
            record["promotion_id"] = _record(conn, **record)
            log.info("Promotion: keep %s. %s", current, reason)
            return {**base, **record, "challenger": {"model_id": model_id, **best.summary(metric)},
                    "champion": champion_doc}

        # Upload, read back and verify, then rows + pointer in one step.
        upload_verified(store, model_id, local, settings)
        metric_doc = load_json(local / "metrics.json") if (local / "metrics.json").is_file() else {}
        _insert_model(conn, model_id, best, snapshot_id, store.uri, manifest_sha, metric_doc)
        record.update(promoted=True, champion_after=model_id)
        record["promotion_id"] = _record(conn, **record)
        if _before_pointer_move is not None:
            _before_pointer_move(model_id)
        _, before = _move_pointer(store, model_id)
        try:
            conn.commit()
        except BaseException:
            _restore_pointer(store, before)
            raise
    log.info("Promotion: %s -> %s. %s", current or "(none)", model_id, reason)
    return {**base, **record, "challenger": {"model_id": model_id, **best.summary(metric)},
            "champion": champion_doc}


def rollback(settings: Settings, engine: "Engine | None" = None) -> dict[str, Any]:
    """Point ``champion`` back at its previous model (verified first) and record a ``rollback`` row."""
    from patentml.artifact import cached_model_dir
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
            cached_model_dir(store, previous, _cache_root(settings), verify=True)
        except ArtifactError as exc:
            raise PromotionError(f"the previous champion {previous} does not verify ({exc}): not rolling back") from exc
        reason = f"rollback requested: champion {current} replaced by the previous champion {previous}"
        record = {"action": "rollback", "promoted": False, "challenger_model_id": previous,
                  "challenger_run_id": None, "champion_before": current, "champion_after": previous,
                  "metric": settings.selection_metric, "challenger_score": None, "champion_score": None,
                  "margin": settings.promotion_margin, "snapshot_id": None, "store_uri": store.uri,
                  "reason": reason}
        from sqlalchemy import text

        record["challenger_run_id"] = conn.execute(
            text("SELECT run_id FROM models WHERE model_id = :m"), {"m": previous}).scalar()
        record["promotion_id"] = _record(conn, **record)
        _, before = _move_pointer(store, previous)
        try:
            conn.commit()
        except BaseException:
            _restore_pointer(store, before)
            raise
    log.info("Rollback: %s -> %s", current, previous)
    return record


# --- listing ------------------------------------------------------------------------------------


def list_models(settings: Settings, engine: "Engine | None" = None) -> list[dict[str, Any]]:
    """What the store holds: each model with its scores (registry row, else its ``metrics.json``), champion marked.

    Works without a database (scores then come from the store's ``metrics.json`` files only).
    """
    from patentml.store import MODELS, open_store

    store = open_store(settings)
    ids = store.list_models()
    champion = store.get_pointer()
    rows: dict[str, Any] = {}
    if engine is not None:
        from sqlalchemy import text

        with engine.connect() as conn:
            for r in conn.execute(
                text("SELECT model_id, run_id, variant, snapshot_id, created_at, metrics FROM models "
                     "WHERE model_id = ANY(:ids)"), {"ids": ids}):
                rows[r.model_id] = r
    out = []
    for model_id in ids:
        item: dict[str, Any] = {"model_id": model_id, "champion": model_id == champion, "registered": False}
        row = rows.get(model_id)
        test: dict[str, Any] = {}
        if row is not None:
            item.update(registered=True, run_id=row.run_id, variant=row.variant, snapshot_id=row.snapshot_id,
                        created_at=row.created_at.isoformat(timespec="seconds") if row.created_at else None)
            test = (row.metrics or {}).get("test") or {}
            item["scores_by_snapshot"] = (row.metrics or {}).get("scores") or {}
        if not test:
            text_doc = store.read_text(f"{MODELS}/{model_id}/metrics.json")
            if text_doc:
                with contextlib.suppress(json.JSONDecodeError):
                    test = json.loads(text_doc)
                    for key in ("run_id", "variant", "snapshot_id"):
                        item.setdefault(key, test.get(key))
        rules = test.get("rules") or {}
        rule = rules.get("tuned") or rules.get("t0.5")
        if rule:
            item.update(f1=rule.get("f1"), p_at_1=rule.get("p_at_1"), n_test=test.get("n_patents"),
                        rule="tuned" if "tuned" in rules else "t0.5")
        out.append(item)
    return out


def decision_as_text(result: dict[str, Any]) -> str:
    """One line for the CLI."""
    head = {"first": "PROMOTED (first champion)", "promote": "PROMOTED", "keep": "KEPT the champion",
            "none": "NOTHING to promote", "rollback": "ROLLED BACK"}[result["action"]]
    return f"{head}: {result['reason']} [champion now: {result['champion_after'] or '(none)'}]"


__all__ = ["Candidate", "best_candidate", "find_candidates", "list_models", "lock_key", "model_id_for",
           "promote", "rollback", "score_artifact", "upload_verified"]

