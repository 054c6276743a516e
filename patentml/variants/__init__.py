"""Variant registry: a variant is ``<encoder>[-<loss>]-<dataset>``; encoders load their module only when asked.

Like Annif's backends, each entry is a small function that imports its module lazily, so listing
or parsing variants never pulls in torch, transformers or scikit-learn.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from patentml.exceptions import ConfigError, DependencyError

if TYPE_CHECKING:
    from patentml.variants.base import Backend

DATASETS = ("full", "subset")
LOSSES = ("bce", "wbce")


def _lazy(module: str, cls: str) -> Callable[[], type["Backend"]]:
    def load() -> type["Backend"]:
        try:
            mod = importlib.import_module(f"patentml.variants.{module}")
        except ImportError as exc:
            raise DependencyError(
                f"The {cls} backend needs a package that is not installed ({exc.name}): "
                "pip install -r requirements.txt"
            ) from exc
        return getattr(mod, cls)

    return load


#: encoder name -> loader of its backend class; ``uses_loss`` says whether a loss is part of the name.
ENCODERS: dict[str, tuple[Callable[[], type["Backend"]], bool]] = {
    "glove": (_lazy("cnn", "GloveCNN"), True),
    "bert": (_lazy("cnn", "BertCNN"), True),
    "tfidf": (_lazy("linear", "TfidfLinear"), False),
    "tfidf-svm": (_lazy("linear", "TfidfSVM"), False),
    "embed-linear": (_lazy("embed", "EmbedLinear"), False),
    "embed-knn": (_lazy("embed", "EmbedKNN"), False),
    "ensemble": (_lazy("ensemble", "Ensemble"), False),
}


@dataclass(frozen=True)
class VariantSpec:
    """A parsed variant name such as ``glove-wbce-full``."""

    encoder: str
    loss: str | None
    dataset: str

    @property
    def name(self) -> str:
        return "-".join(p for p in (self.encoder, self.loss, self.dataset) if p)

    def backend_class(self) -> type["Backend"]:
        return ENCODERS[self.encoder][0]()


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
    if encoder not in ENCODERS:
        raise ConfigError(
            f"unknown encoder {encoder!r} in variant {name!r}; known: {', '.join(sorted(ENCODERS))}"
        )
    uses_loss = ENCODERS[encoder][1]
    if uses_loss and loss is None:
        raise ConfigError(f"variant {name!r} needs a loss: {encoder}-bce-{dataset} or {encoder}-wbce-{dataset}")
    if not uses_loss and loss is not None:
        raise ConfigError(f"encoder {encoder!r} takes no loss: use {encoder}-{dataset}")
    return VariantSpec(encoder, loss, dataset)


def known_variants() -> list[str]:
    """Every variant name the registry can build."""
    out = []
    for encoder, (_, uses_loss) in ENCODERS.items():
        for dataset in DATASETS:
            if uses_loss:
                out.extend(f"{encoder}-{loss}-{dataset}" for loss in LOSSES)
            else:
                out.append(f"{encoder}-{dataset}")
    return out
