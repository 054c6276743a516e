"""Fit one run's shared Params to one variant: what a model does not take is left out, and logged.

A retrain run's Params (epochs, batch size, alpha, ``model_overrides``) are shared by all its
variants, but the linear TF-IDF model has no epochs and the CNNs have no ``C``. A setting that some
PatentML model takes but this variant's model does not is dropped for this variant only; a setting
no model knows is passed on, so the library refuses it with its own message (a typo never
disappears silently). Everything comes from the registry in ``patentml.variants``.
"""

from __future__ import annotations

from typing import Any

from patentml import variants as registry

SHARED = ("epochs", "batch_size", "alpha")


def training_arguments(spec: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(keyword arguments for ``patentml.train.train``, names of settings left out for this variant)."""
    variant = registry.parse_variant(spec["variant"])
    kwargs: dict[str, Any] = {key: spec.get(key) for key in SHARED}
    if not variant.takes_alpha:
        kwargs["alpha"] = None  # alpha weighs the positive term of weighted BCE only
    own = set(variant.backend_class().DEFAULTS)
    anywhere = set().union(*(registry.backend_class(e).DEFAULTS for e in registry.encoders()))
    overrides = dict(spec.get("overrides") or {})
    ignored: list[str] = []
    for key in SHARED:
        if kwargs[key] is not None and key not in own:
            ignored.append(key)
            kwargs[key] = None
    for key in list(overrides):
        if key not in own and key in anywhere:
            ignored.append(key)
            del overrides[key]
    kwargs["overrides"] = overrides or None
    kwargs["seed"] = int(spec.get("seed") or 0)
    return kwargs, ignored


def run_training(spec: dict[str, Any], context: Any) -> dict[str, Any]:
    """The retrain DAG's ``train`` task: one variant, as one run row shared by every try of this task instance.

    A retry (on this or another worker) continues the run from its last checkpoint in the model
    store. Errors no retry can fix (bad settings, an unknown variant) fail the task at once.
    """
    import socket

    from airflow.sdk.exceptions import AirflowFailException

    from patentml.db.runs import RunOrigin
    from patentml.exceptions import ConfigError
    from patentml_airflow.config import ConfigurationError
    from patentml_airflow.hook import PatentMLHook

    ti = context["ti"]
    origin = RunOrigin(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number)
    try:
        settings = PatentMLHook(device=spec.get("device")).get_settings()
        kwargs, ignored = training_arguments(spec)
        if ignored:
            print(f"{spec['variant']}: not used by this model, left out: {', '.join(ignored)}")
        from patentml.train import train

        # The snapshot this run rebuilt, not a newer one.
        run_id = train(spec["variant"], settings, snapshot_id=spec.get("snapshot_id"), origin=origin, **kwargs)
    except (ConfigError, ConfigurationError) as exc:
        raise AirflowFailException(f"{spec['variant']}: {exc} (no retry can fix this)") from exc
    print(f"{spec['variant']}: run {run_id} trained on {socket.gethostname()} (try {ti.try_number})")
    return {"variant": spec["variant"], "run_id": int(run_id), "host": socket.gethostname()}
