"""Fit one run's shared Params to one variant: what a model does not take is left out, and logged.

A retrain run's Params (epochs, batch size, alpha, ``model_overrides``) are shared by all its
variants, but the linear TF-IDF model has no epochs and the CNNs have no ``C``. A setting that some
PatentML model takes but this variant's model does not is dropped for this variant only; a setting
no model knows is passed on, so the library refuses it with its own message (a typo never
disappears silently). Imported inside the training task only: it loads the model modules.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

SHARED = ("epochs", "batch_size", "alpha")


def _defaults_by_encoder() -> dict[str, set[str]] | None:
    try:
        from patentml.variants import ENCODERS

        return {name: set(entry[0]().DEFAULTS) for name, entry in ENCODERS.items()}
    except Exception as exc:  # noqa: BLE001 - an unexpected registry shape: let the library decide
        log.warning("Cannot read the model registry (%s): passing all settings on unchanged", exc)
        return None


def training_arguments(spec: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(keyword arguments for ``patentml.train.train``, names of settings left out for this variant)."""
    variant = spec["variant"]
    kwargs: dict[str, Any] = {key: spec.get(key) for key in SHARED}
    if "-wbce-" not in variant:
        kwargs["alpha"] = None  # alpha weighs the positive term of weighted BCE only
    overrides = dict(spec.get("overrides") or {})
    ignored: list[str] = []
    registry = _defaults_by_encoder()
    if registry is not None:
        from patentml.variants import parse_variant

        own = registry.get(parse_variant(variant).encoder, set())
        anywhere = set().union(*registry.values())
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
