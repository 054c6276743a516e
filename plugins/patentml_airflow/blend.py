"""The retrain DAG's blend step: for each dataset with two or more evaluated variants, train and evaluate the blend.

A blend that fails is reported in its outcome (``error``) and never stops promotion among the
single variants. Imported inside the task only: it loads the training code.
"""

from __future__ import annotations

import socket
import traceback
from typing import Any

from patentml_airflow.config import overrides_for
from patentml_airflow.xcom import blend_groups, blend_variant, headline


def run_blends(params: dict[str, Any], specs: list[dict], evaluated: list[dict], settings: Any,
               engine: Any) -> list[dict]:
    """One outcome per blend, shaped like evaluate's (plus ``members``), or with an ``error``."""
    from patentml.evaluate import evaluate_run
    from patentml.train import train
    from patentml.variants import parse_variant

    groups = blend_groups(evaluated)
    if not groups:
        print("blend: nothing to blend, no dataset has two evaluated variants (evaluated: "
              f"{', '.join(e['variant'] for e in evaluated) or 'none'})")
        return []
    snapshot_id = next((s["snapshot_id"] for s in specs if s.get("snapshot_id") is not None), None)
    outcomes = []
    for dataset, members in groups.items():
        name = blend_variant(dataset)
        member_runs = [int(m["run_id"]) for m in members]
        outcome: dict[str, Any] = {"variant": name, "members": member_runs, "host": socket.gethostname()}
        try:
            # The blend's own settings from model_overrides (weight_step, max_members, ...); the members are these runs.
            backend = parse_variant(name).backend_class()
            known = set(backend.DEFAULTS) - set(backend.CANDIDATE_SETTINGS)
            extra = {k: v for k, v in overrides_for(params.get("model_overrides") or {}, name).items() if k in known}
            print(f"{name}: blending runs {', '.join(map(str, member_runs))} "
                  f"({', '.join(m['variant'] for m in members)})" + (f" with {extra}" if extra else ""))
            run_id = train(name, settings, overrides={**extra, "member_runs": member_runs},
                           seed=int(params.get("seed") or 0), snapshot_id=snapshot_id)
            outcome["run_id"] = int(run_id)
            outcome["metrics"] = headline(evaluate_run(engine, run_id, settings))
            print(f"{name} (run {run_id}): {outcome['metrics']}")
        except Exception as exc:  # noqa: BLE001 - a failed blend is reported; promotion goes on without it
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            print(f"BLEND FAILED: {name} of runs {', '.join(map(str, member_runs))}: {outcome['error']}\n"
                  f"{traceback.format_exc()}promotion goes on among the single variants; report will mark the run failed")
        outcomes.append(outcome)
    return outcomes
