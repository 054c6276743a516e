"""The variant registry: the one list of encoders (backends), losses and datasets, and what each backend can do.

A variant is ``<encoder>[-<loss>]-<dataset>`` (``glove-wbce-full``, ``tfidf-svm-subset``). Each
encoder is one line of :data:`BACKENDS` naming the class that implements it; the class itself
declares its capabilities as class attributes (see :class:`patentml.variants.base.Backend`). Backend
modules import their heavy libraries (numpy, torch, scikit-learn) inside methods only, so reading the
registry - for ``patentml --help``, a DAG's Params, the UI - costs milliseconds and loads no ML library.

Adding a model type is one backend file plus one line here; the CLI, the retrain DAG's Params, the
plugin's validation, training, prediction and the UI all read this module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from patentml.exceptions import ConfigError, DependencyError

if TYPE_CHECKING:
    from patentml.variants.base import Backend

#: The paper's corpora: ``full`` (USPTO-2M) and ``subset`` (USPTO-0.3M, a 15 % sample).
DATASETS = ("full", "subset")
#: Training objectives of the paper: binary cross-entropy, and BCE with alpha on the positive term.
LOSSES = ("bce", "wbce")
#: The losses that take ``alpha`` (the weight of the positive term).
WEIGHTED_LOSSES = ("wbce",)

#: encoder name -> ``module:Class`` (a module of ``patentml.variants``, or a dotted module path for a
#: backend that lives elsewhere, such as a plugin's). One line per model type.
BACKENDS: dict[str, str] = {
    "glove": "cnn:GloveCNN",
    "bert": "cnn:BertCNN",
    "tfidf": "linear:TfidfLinear",
    "tfidf-svm": "linear:TfidfSVM",
    "embed-linear": "embed:EmbedLinear",
    "embed-knn": "embed:EmbedKNN",
    "ensemble": "ensemble:Ensemble",
}


def backend_class(encoder: str) -> type["Backend"]:
    """The backend class of an encoder; its module is imported on first use."""
    return _load(encoder, BACKENDS.get(encoder, ""))


@cache
def _load(encoder: str, target: str) -> type["Backend"]:
    if not target:
        raise ConfigError(f"unknown encoder {encoder!r}; known: {', '.join(BACKENDS)}")
    module, cls = target.split(":")
    try:
        mod = importlib.import_module(module if "." in module else f"patentml.variants.{module}")
    except ImportError as exc:
        raise DependencyError(
            f"The {encoder} backend needs a package that is not installed ({exc.name}): "
            "pip install -r requirements.txt"
        ) from exc
    found: type[Backend] = getattr(mod, cls)
    if found.name != encoder:
        raise ConfigError(f"registry line {encoder!r} names {target}, whose name is {found.name!r}")
    return found


def encoders(*, trainable: bool | None = None) -> list[str]:
    """Encoder names in registry order; ``trainable=True`` leaves out backends built from other runs."""
    names = list(BACKENDS)
    if trainable is None:
        return names
    return [e for e in names if (not backend_class(e).built_from_runs) == trainable]


@dataclass(frozen=True)
class VariantSpec:
    """A parsed variant name such as ``glove-wbce-full``."""

    encoder: str
    loss: str | None
    dataset: str

    @property
    def name(self) -> str:
        return variant_name(self.encoder, self.loss, self.dataset)

    def backend_class(self) -> type["Backend"]:
        return backend_class(self.encoder)

    @property
    def takes_alpha(self) -> bool:
        """Whether ``alpha`` (the positive-term weight) means anything for this variant."""
        return self.loss in WEIGHTED_LOSSES


def variant_name(encoder: str, loss: str | None, dataset: str) -> str:
    """``glove``, ``wbce``, ``full`` -> ``glove-wbce-full``; a loss-free backend drops the loss."""
    return "-".join(p for p in (encoder, loss if backend_class(encoder).has_loss else None, dataset) if p)


def parse_variant(name: str) -> VariantSpec:
    """``glove-wbce-full`` -> (glove, wbce, full); ``tfidf-full`` -> (tfidf, None, full).

    Parsed from the right, so encoder names may themselves contain hyphens.
    """
    parts = name.strip().lower().split("-")
    if len(parts) < 2 or parts[-1] not in DATASETS:
        raise ConfigError(
            f"variant {name!r} must end with a dataset ({' or '.join(DATASETS)}), e.g. glove-wbce-full"
        )
    dataset = parts.pop()
    loss = parts.pop() if parts[-1] in LOSSES else None
    encoder = "-".join(parts)
    if encoder not in BACKENDS:
        raise ConfigError(
            f"unknown encoder {encoder!r} in variant {name!r}; known: {', '.join(BACKENDS)}. "
            f"Variants: {', '.join(known_variants())}"
        )
    has_loss = backend_class(encoder).has_loss
    if has_loss and loss is None:
        raise ConfigError(f"variant {name!r} needs a loss: " + " or ".join(f"{encoder}-{l}-{dataset}" for l in LOSSES))
    if not has_loss and loss is not None:
        raise ConfigError(f"encoder {encoder!r} takes no loss: use {encoder}-{dataset}")
    return VariantSpec(encoder, loss, dataset)


def matrix(encoder_names: list[str], losses: list[str], datasets: list[str]) -> list[str]:
    """Variant names of encoders x losses x datasets; a loss-free encoder appears once per dataset."""
    for what, chosen, allowed in (("encoders", encoder_names, list(BACKENDS)), ("losses", losses, list(LOSSES)),
                                  ("datasets", datasets, list(DATASETS))):
        unknown = [c for c in chosen if c not in allowed]
        if unknown:
            raise ConfigError(f"unknown {what} {unknown}; choose from {allowed}")
    names = [
        variant_name(e, loss, d)
        for d in datasets
        for e in encoder_names
        for loss in (losses if backend_class(e).has_loss else [None])
    ]
    return list(dict.fromkeys(names))


def known_variants(*, trainable: bool | None = None) -> list[str]:
    """Every variant name the registry can build (``trainable``: as in :func:`encoders`)."""
    return matrix(encoders(trainable=trainable), list(LOSSES), list(DATASETS))


def describe() -> list[dict[str, object]]:
    """Each encoder with its variants and capabilities (``patentml variants``, the UI page)."""
    out: list[dict[str, object]] = []
    for encoder in encoders():
        cls = backend_class(encoder)
        out.append({"encoder": encoder, "variants": matrix([encoder], list(LOSSES), list(DATASETS)),
                    "has_loss": cls.has_loss, "needs_torch": cls.needs_torch, "can_fine_tune": cls.can_fine_tune,
                    "caches": list(cls.caches), "built_from_runs": cls.built_from_runs, "explains": cls.explains,
                    "predict_batch": cls.predict_batch})
    return out


def is_model_key(key: str) -> bool:
    """Whether ``key`` names an encoder or a variant (scoped settings in ``model_overrides``)."""
    if key in BACKENDS:
        return True
    try:
        parse_variant(key)
    except ConfigError:
        return False
    return True


__all__ = ["BACKENDS", "DATASETS", "LOSSES", "WEIGHTED_LOSSES", "VariantSpec", "backend_class", "describe", "encoders",
           "is_model_key", "known_variants", "matrix", "parse_variant", "variant_name"]
