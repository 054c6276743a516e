"""Small helpers that keep what tasks pass through XCom plain JSON, and read mapped results."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any, Iterable

def jsonable(value: Any) -> Any:
    """Dicts, lists, numbers and strings only (numpy scalars, dates, paths and dataclasses converted)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "as_dict"):
        return jsonable(value.as_dict())
    if hasattr(value, "item"):  # numpy scalar
        return jsonable(value.item())
    if hasattr(value, "__float__"):
        return jsonable(float(value))
    return str(value)


def headline(evaluation: dict[str, Any]) -> dict[str, Any]:
    """What a task hands on of an evaluation (the rest is in Postgres): the run's score under its own rule."""
    from patentml.scoring import run_score

    data = jsonable(evaluation)
    return {**{k: data[k] for k in ("run_id", "variant", "split", "snapshot_id", "n_unseen_labels") if k in data},
            **run_score(data)}


def split_outcomes(specs: Iterable[dict], results: Any) -> tuple[list[dict], list[str]]:
    """(evaluated results, names of planned variants without one) from a mapped task's XComs."""
    if results is None:
        results = []
    elif isinstance(results, dict):
        results = [results]
    evaluated = [r for r in results if isinstance(r, dict) and "run_id" in r]
    done = {r.get("variant") for r in evaluated}
    failed = [s["variant"] for s in specs or [] if s.get("variant") not in done]
    return evaluated, failed


def blend_variant(dataset: str) -> str:
    """The blend step's variant of one dataset (``ensemble-full``): the registry's backend built from runs."""
    from patentml import variants as registry

    blender = next(e for e in registry.encoders() if registry.backend_class(e).built_from_runs)
    return registry.variant_name(blender, None, dataset)


def blend_groups(evaluated: Iterable[dict]) -> dict[str, list[dict]]:
    """The evaluated runs the blend step blends: by dataset, for each dataset with at least two of them."""
    from patentml.variants import parse_variant

    groups: dict[str, list[dict]] = {}
    for outcome in evaluated:
        groups.setdefault(parse_variant(str(outcome["variant"])).dataset, []).append(outcome)
    return {dataset: runs for dataset, runs in groups.items() if len(runs) >= 2}


def split_blends(blends: Any) -> tuple[list[dict], list[dict]]:
    """(evaluated blend outcomes, failed ones) from the blend task's XCom (a list; None when it did not run).

    A failed blend is an outcome with an ``error``; it may carry the ``run_id`` of a run that
    trained but could not be evaluated, and is never a candidate for promotion.
    """
    if isinstance(blends, dict):
        blends = [blends]
    items = [b for b in blends or [] if isinstance(b, dict)]
    evaluated = [b for b in items if "run_id" in b and not b.get("error")]
    failed = [b for b in items if b.get("error") or "run_id" not in b]
    return evaluated, failed


def _blend_lines(
    evaluated: list[dict], blends: Any, blend: bool
) -> tuple[list[str], list[str]]:
    """(lines about the blend step, names of the blends that failed)."""
    if not blend:
        return ["Blends: off (Param blend)"], []
    groups = blend_groups(evaluated)
    if blends is None and groups:
        # The task had something to blend but left no result: it failed (or was stopped) as a whole.
        failed = [blend_variant(dataset) for dataset in groups]
        return [
            "Blends evaluated: none",
            f"Blends failed: {', '.join(failed)} (the blend task did not complete: see its log)",
        ], failed
    done, broken = split_blends(blends)
    if not done and not broken:
        return ["Blends: none (no dataset has two evaluated variants)"], []
    lines = [
        "Blends evaluated: "
        + (", ".join(
            f"{b['variant']} (run {b['run_id']} of runs {', '.join(str(m) for m in b.get('members') or [])})"
            for b in done
        ) or "none"),
        "Blends failed: " + (", ".join(f"{b.get('variant')} ({b.get('error') or 'no result'})" for b in broken)
                             or "none"),
    ]
    return lines, [str(b.get("variant")) for b in broken]


def run_outcome(
    specs: list[dict] | None,
    results: Any,
    decision: dict | None,
    fail_on_variant_failure: bool = True,
    blends: Any = None,
    blend: bool = False,
) -> tuple[str, str | None]:
    """(what a retrain run did, in words; why the run must be marked failed, or None).

    ``specs`` is None when planning never ran (splits failed), ``[]`` when there was nothing to
    train; a missing ``decision`` with evaluated variants means promotion failed. ``blends`` is the
    blend task's XCom and ``blend`` its Param: a failed blend counts like a failed variant.
    """
    if specs is None:
        return "Nothing was trained.", "the run failed before training: rebuild_splits or plan_variants did not succeed"
    if not specs:
        return "No variant was trained in this run (the corpus is unchanged and only_if_changed is set).", None
    evaluated, failed = split_outcomes(specs, results)
    lines = [
        f"Variants evaluated: {', '.join(e['variant'] for e in evaluated) or 'none'}",
        f"Variants failed: {', '.join(failed) or 'none'}",
    ]
    failed_blends: list[str] = []
    if evaluated:
        blend_lines, failed_blends = _blend_lines(evaluated, blends, blend)
        lines += blend_lines
    if decision:
        lines.append(
            f"Promotion: {'promoted' if decision.get('promoted') else 'not promoted'}; "
            f"champion {decision.get('champion_after') or decision.get('champion')}; {decision.get('reason')}"
        )
    text = "\n".join(lines)
    if not evaluated:
        return text, f"no variant could be evaluated (failed: {', '.join(failed)})"
    if not decision:
        return text, "promotion did not complete: see the promote task's log"
    if (failed or failed_blends) and fail_on_variant_failure:
        parts = []
        if failed:
            parts.append(f"{len(failed)} of {len(specs)} variants failed ({', '.join(failed)})")
        if failed_blends:
            parts.append(f"the blend failed ({', '.join(failed_blends)})")
        return text, "; ".join(parts) + "; promotion ran on the ones that finished"
    return text, None
