"""What the DAG files read at parse time: schedules, pools, queues, the patents Asset, the variant matrix.

Everything comes from ``PATENTML_*`` environment variables with defaults, so an operator changes
the wiring without editing DAG files. Standard library only: this runs every time a DAG is parsed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

#: The patents table as an Airflow Asset (AIP-60 ``postgres://host:port/database/schema/table``).
#: The host is a logical name: the real server comes from the ``patentml_db`` Connection at run time.
PATENTS_ASSET_NAME = "patentml_patents"
PATENTS_ASSET_URI = "postgres://patentml:5432/patentml/public/patents"

ENCODERS = ("glove", "bert", "tfidf", "tfidf-svm", "embed-linear", "embed-knn")
#: Encoders whose variant name carries a loss (the CNNs); the linear TF-IDF model has none.
LOSS_ENCODERS = ("glove", "bert")
LOSSES = ("bce", "wbce")
DATASETS = ("full", "subset")
#: Loss-free encoders: TF-IDF with logistic regression or a linear SVM, sentence embeddings + head.
#: (The ensemble blends finished runs: the retrain DAG's ``blend`` task trains ``ensemble-<dataset>`` from the
#: variants it just evaluated; by hand it is ``patentml train --variant ensemble-full``.)
VARIANT_PATTERN = r"^(?:(?:glove|bert)-(?:bce|wbce)|tfidf|tfidf-svm|embed-linear|embed-knn)-(?:full|subset)$"
_VARIANT_RE = re.compile(VARIANT_PATTERN)

RETRAIN_SCHEDULES = ("nightly", "asset", "both", "none")

#: The nightly matrix (docs/results.md, "What the nightly matrix runs"): the peers every champion must
#: beat and the blend's members (tfidf-svm, the MiniLM MLP head, the hybrid nearest-neighbour model),
#: then the paper's four full-corpus CNNs, reported beside them. The blend step picks the members.
#: What the nightly matrix changes from the library defaults, which keep the paper's values
#: (docs/results.md): the MiniLM head fine-tunes its encoder (+1.9 F1 / +1.5 P@1 on test; about 45
#: minutes on 2 CPU cores, minutes on a GPU worker), and GloVe+CNN gets the settings the search on
#: validation chose (trainable embeddings with their own learning rate, embedding dropout, 256 filters,
#: a cosine schedule, alpha 4 for weighted BCE: validation F1 37.8 -> 42.0 for glove-wbce-full).
GLOVE_TUNED: dict[str, Any] = {"trainable_embeddings": True, "embed_lr": 0.001, "embed_dropout": 0.2,
                               "num_filters": 256, "lr_schedule": "cosine", "alpha": 4.0}
DEFAULT_OVERRIDES: dict[str, Any] = {"embed-linear": {"fine_tune": True}, "glove": GLOVE_TUNED}
DEFAULT_VARIANTS = ("tfidf-svm-full", "embed-linear-full", "embed-knn-full",
                    "glove-bce-full", "glove-wbce-full", "bert-bce-full", "bert-wbce-full")


class ConfigurationError(ValueError):
    """An environment variable or a run's parameters do not describe a valid configuration."""


def env(name: str, default: str) -> str:
    """``PATENTML_<name>``, or ``default`` when unset or empty."""
    value = os.environ.get("PATENTML_" + name, "").strip()
    return value or default


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"PATENTML_{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigurationError(f"PATENTML_{name}={value} must be at least {minimum}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_bool(name: str, default: bool) -> bool:
    """``PATENTML_<name>`` as a switch: 1/true/yes/on or 0/false/no/off (any case); unset or empty: ``default``."""
    raw = env(name, "").lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigurationError(f"PATENTML_{name}={raw!r} must be one of {', '.join(_TRUE + _FALSE)}")


def env_json_object(name: str, default: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object, e.g. ``PATENTML_RETRAIN_OVERRIDES='{"glove": {"num_filters": 256}}'``."""
    import json

    raw = os.environ.get("PATENTML_" + name, "").strip()
    if not raw:
        return json.loads(json.dumps(default))  # a fresh copy
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"PATENTML_{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"PATENTML_{name} must be a JSON object, got {type(value).__name__}")
    return value


def env_list(name: str, default: Iterable[str]) -> list[str]:
    """A comma- or whitespace-separated list."""
    raw = os.environ.get("PATENTML_" + name, "").strip()
    if not raw:
        return list(default)
    return [item for item in re.split(r"[,\s]+", raw) if item]


@dataclass(frozen=True)
class DagConfig:
    """The operator's choices for both DAGs, read from the environment once per parse."""

    ingest_source: str
    ingest_cron: str | None
    retrain_schedule: str
    retrain_cron: str
    timezone: str
    train_pool: str
    train_queue: str
    train_retries: int
    train_timeout_hours: int
    task_retries: int
    default_variants: list[str]
    default_overrides: dict[str, Any]
    only_if_changed: bool
    #: Default of the retrain DAG's ``blend`` Param: blend each dataset's evaluated runs into ``ensemble-<dataset>``.
    blend: bool

    @classmethod
    def from_env(cls) -> "DagConfig":
        schedule = env("RETRAIN_SCHEDULE", "both").lower()
        if schedule not in RETRAIN_SCHEDULES:
            raise ConfigurationError(
                f"PATENTML_RETRAIN_SCHEDULE={schedule!r} must be one of {', '.join(RETRAIN_SCHEDULES)}"
            )
        ingest_cron = env("INGEST_SCHEDULE", "0 6 * * 2")  # USPTO publishes grants on Tuesdays
        variants = env_list("RETRAIN_VARIANTS", DEFAULT_VARIANTS)
        for name in variants:
            check_variant(name, where="PATENTML_RETRAIN_VARIANTS")
        return cls(
            ingest_source=env("INGEST_SOURCE", ""),
            ingest_cron=None if ingest_cron.lower() in ("none", "off", "manual") else ingest_cron,
            retrain_schedule=schedule,
            retrain_cron=env("RETRAIN_CRON", "0 2 * * *"),
            timezone=env("AIRFLOW_TIMEZONE", "UTC"),
            train_pool=env("TRAIN_POOL", "gpu"),
            train_queue=env("TRAIN_QUEUE", "gpu"),
            train_retries=env_int("TRAIN_RETRIES", 1),
            train_timeout_hours=env_int("TRAIN_TIMEOUT_HOURS", 12, minimum=1),
            task_retries=env_int("TASK_RETRIES", 2),
            default_variants=variants,
            default_overrides=env_json_object("RETRAIN_OVERRIDES", DEFAULT_OVERRIDES),
            only_if_changed=env("RETRAIN_ONLY_IF_CHANGED", "false").lower() in ("1", "true", "yes", "on"),
            blend=env_bool("RETRAIN_BLEND", True),
        )


def check_variant(name: str, where: str = "variants") -> str:
    if not _VARIANT_RE.match(name):
        raise ConfigurationError(
            f"{where}: {name!r} is not a variant; use <encoder>-<loss>-<dataset> for glove/bert "
            "(e.g. glove-wbce-full, bert-bce-subset) or tfidf|tfidf-svm|embed-linear|embed-knn-<dataset> (e.g. tfidf-full)"
        )
    return name


def variant_name(encoder: str, loss: str | None, dataset: str) -> str:
    return f"{encoder}-{loss}-{dataset}" if encoder in LOSS_ENCODERS else f"{encoder}-{dataset}"


def build_variants(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The training specs of one retrain run, from its (already schema-validated) Params.

    ``variants`` wins when it is not empty; otherwise encoders x losses x datasets, where the
    linear TF-IDF model takes no loss. Each spec carries everything a training task needs, so the
    mapped tasks do not read Params themselves.
    """
    explicit = [str(v).strip().lower() for v in params.get("variants") or [] if str(v).strip()]
    if explicit:
        names = [check_variant(v, where="Param 'variants'") for v in explicit]
    else:
        encoders = list(params.get("encoders") or [])
        losses = list(params.get("losses") or [])
        datasets = list(params.get("datasets") or [])
        for what, chosen, allowed in (
            ("encoders", encoders, ENCODERS),
            ("losses", losses, LOSSES),
            ("datasets", datasets, DATASETS),
        ):
            unknown = [c for c in chosen if c not in allowed]
            if unknown:
                raise ConfigurationError(f"Param '{what}': unknown {unknown}; choose from {list(allowed)}")
        if not encoders or not datasets:
            raise ConfigurationError("choose at least one encoder and one dataset (or list 'variants')")
        if not losses and any(e in LOSS_ENCODERS for e in encoders):
            raise ConfigurationError("glove and bert need at least one loss (bce, wbce)")
        names = [
            variant_name(e, loss, d)
            for d in datasets
            for e in encoders
            for loss in (losses if e in LOSS_ENCODERS else [None])
        ]
    names = list(dict.fromkeys(names))  # keep order, drop repeats
    overrides = params.get("model_overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigurationError("Param 'model_overrides' must be a JSON object, e.g. {\"num_filters\": 128}")
    common = {
        "epochs": params.get("epochs"),
        "batch_size": params.get("batch_size"),
        "alpha": params.get("alpha"),
        "seed": int(params.get("seed") or 0),
        "device": params.get("device"),
    }
    return [{"variant": name, **common, "overrides": overrides_for(overrides, name)} for name in names]


def overrides_for(overrides: Mapping[str, Any], variant: str) -> dict[str, Any]:
    """The settings of ``model_overrides`` that apply to ``variant``.

    Plain keys apply to every variant (each model keeps the ones it knows); a key naming an encoder
    (``"glove"``) or a variant (``"glove-wbce-full"``) holds settings for it alone, the variant's
    winning over the encoder's, which win over the plain ones:
    ``{"dropout": 0.3, "glove": {"trainable_embeddings": true}, "bert-bce-full": {"fine_tune": true}}``.
    """
    encoder = variant.rsplit("-", 1)[0]
    for loss in LOSSES:
        encoder = encoder.removesuffix("-" + loss)
    scoped = {}
    plain = {}
    for key, value in overrides.items():
        if key in ENCODERS or key == "ensemble" or _VARIANT_RE.match(key) or key.startswith("ensemble-"):
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"Param 'model_overrides': {key!r} names a model, so its value must be "
                                         f"an object of settings, got {value!r}")
            scoped[key] = dict(value)
        else:
            plain[key] = value
    return {**plain, **scoped.get(encoder, {}), **scoped.get(variant, {})}
