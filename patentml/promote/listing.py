"""What the model store holds, with each model's score (its run's score, as everywhere) and the champion marked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
        item: dict[str, Any] = {"model_id": model_id, "champion": model_id == champion, "registered": False}
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
