"""Small helpers that keep what tasks pass through XCom plain JSON, and read mapped results."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any, Iterable

#: The metrics a task hands on (the full set is in Postgres); names as ``evaluate_run`` returns them.
HEADLINE_KEYS = (
    "precision", "recall", "f1", "example_f1", "p_at_1", "r_at_5", "f1_at_5",
    "n_patents", "empty_share", "rule", "threshold", "split",
)


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


def headline(metrics: Any) -> dict[str, Any]:
    """The scalar headline of an evaluation: top-level scalars plus the paper rule's (``t0.5``) scores.

    ``evaluate_run`` returns ``{"run_id", "n_patents", ..., "rules": {"t0.5": {...}, "tuned": {...}}}``;
    a flat dict, or one nested under ``test``/``metrics``, is read as well.
    """
    data = jsonable(metrics)
    if not isinstance(data, dict):
        return {"value": data}

    def scalars(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if not isinstance(v, (dict, list))}

    out = {k: v for k, v in scalars(data).items() if k in HEADLINE_KEYS or k.startswith("n_")}
    rules = data.get("rules")
    if isinstance(rules, dict) and rules:
        name = "t0.5" if "t0.5" in rules else next(iter(rules))
        if isinstance(rules[name], dict):
            out.update(scalars(rules[name]))
            out["rule"] = name
        return out
    for key in ("test", "t0.5", "headline", "metrics"):
        if isinstance(data.get(key), dict):
            out.update(scalars(data[key]))
            break
    return out


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


def run_outcome(
    specs: list[dict] | None,
    results: Any,
    decision: dict | None,
    fail_on_variant_failure: bool = True,
) -> tuple[str, str | None]:
    """(what a retrain run did, in words; why the run must be marked failed, or None).

    ``specs`` is None when planning never ran (splits failed), ``[]`` when there was nothing to
    train; a missing ``decision`` with evaluated variants means promotion failed.
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
    if failed and fail_on_variant_failure:
        return text, (
            f"{len(failed)} of {len(specs)} variants failed ({', '.join(failed)}); "
            "promotion ran on the ones that finished"
        )
    return text, None
