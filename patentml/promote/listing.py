"""What the model store holds, with each model's score (its run's score, as everywhere) and the champion marked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from patentml.exceptions import StoreError
from patentml.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def list_models(settings: Settings, engine: "Engine | None" = None) -> list[dict[str, Any]]:
    """Every model id in the store; with a database, its registry row and its run's score on the test split."""
    from patentml.store import open_store

    store = open_store(settings)
    ids = store.list_models()
    champion = store.get_pointer()
    rows: dict[str, Any] = {}
    scores: dict[int, dict[str, Any]] = {}
    if engine is not None:
        from patentml.db import registry, results

        with engine.connect() as conn:
            rows = registry.models(conn, ids)
            run_ids = [r.run_id for r in rows.values() if r.run_id is not None]
            scores = {s["run_id"]: s for s in results.run_scores(conn, run_ids)} if run_ids else {}
    out = []
    for model_id in ids:
        item: dict[str, Any] = {"model_id": model_id, "champion": model_id == champion, "registered": False,
                                "complete": store.is_complete(model_id)}
        row = rows.get(model_id)
        if row is not None:
            item.update(registered=True, run_id=row.run_id, variant=row.variant, snapshot_id=row.snapshot_id,
                        created_at=row.created_at.isoformat(timespec="seconds") if row.created_at else None,
                        scores_by_snapshot=(row.metrics or {}).get("scores") or {})
            score = scores.get(row.run_id)
            if score is not None:
                item.update(f1=score["f1"], p_at_1=score["p_at_1"], r_at_5=score["r_at_5"],
                            n_test=score["n_patents"], rule=score["rule"])
        out.append(item)
    return out


def remove_model(settings: Settings, model_id: str, engine: "Engine", *, candidate: bool = False) -> str:
    """Remove an upload that was never promoted (an orphan of a failed promotion, an interrupted upload),
    or with ``candidate`` a run's candidate that no succeeded run refers to; returns what was done.

    Refused: the champion (any pointer), a model the registry recorded (promotion history and
    rollback need it), a candidate a succeeded run still uses.
    """
    from patentml.db import registry, runs
    from patentml.store import CANDIDATES, MODELS, check_name, open_store

    check_name(model_id)
    store = open_store(settings)
    area = CANDIDATES if candidate else MODELS
    if not store.exists(model_id, area):
        raise StoreError(f"{area}/{model_id} is not in {store.uri}: see `patentml models list`")
    with engine.connect() as conn:
        if candidate:
            users = runs.using_artifact(conn, model_id)
            if users:
                raise StoreError(f"refusing to remove candidate {model_id}: run(s) {', '.join(map(str, users))} "
                                 "use it (evaluation and promotion fetch it)")
        elif registry.model(conn, model_id) is not None:
            raise StoreError(f"refusing to remove {model_id}: it was promoted (the registry's history and "
                             "`promote --rollback` need it)")
    complete = store.is_complete(model_id, area)
    store.delete_model(model_id, area)  # refuses a model any pointer names
    return f"removed {area}/{model_id} from {store.uri}" + ("" if complete else " (an interrupted upload)")
