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
