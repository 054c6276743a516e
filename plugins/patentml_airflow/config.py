"""What the DAG files read at parse time: schedules, pools, queues, the patents Asset, the variant matrix.

Everything comes from ``PATENTML_*`` environment variables with defaults, so an operator changes
the wiring without editing DAG files. The variants, encoders, losses and datasets come from the
registry in ``patentml.variants``, which loads no ML library: this runs every time a DAG is parsed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from patentml import variants as registry
from patentml.exceptions import ConfigError

#: The patents table as an Airflow Asset (AIP-60 ``postgres://host:port/database/schema/table``).
#: The host is a logical name: the real server comes from the ``patentml_db`` Connection at run time.
PATENTS_ASSET_NAME = "patentml_patents"
PATENTS_ASSET_URI = "postgres://patentml:5432/patentml/public/patents"
#: The champion model as an Asset: promotion updates it when the champion pointer moves (its event's
#: extra names the model), and the scoring DAG runs on it. The URI names the pointer's role, not a bucket.
CHAMPION_ASSET_NAME = "patentml_champion"
CHAMPION_ASSET_URI = "patentml://models/pointers/champion"

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


def env_bool(name: str, default: bool | None) -> bool | None:
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
    #: Default of the ``only_if_changed`` Param; None: scheduled runs skip an unchanged corpus, manual runs train.
    only_if_changed: bool | None
    #: Default of the retrain DAG's ``blend`` Param: blend each dataset's evaluated runs into ``ensemble-<dataset>``.
    blend: bool
    #: Wait before a failed training task is tried again (it resumes from its last stored epoch).
    train_retry_delay_seconds: int = 600
    #: A retrain run not finished this many hours after it was queued sends an alert (0: no deadline).
    retrain_deadline_hours: int = 8
    #: How long a held promotion waits for a person before the default answer (Reject) applies.
    approval_timeout_hours: int = 24

    #: When every PatentML DAG starts counting (none catches up on runs before it was deployed).
    START_DATE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)

    def default_args(self, retry_minutes: float = 5, backoff: bool = True) -> dict[str, Any]:
        """The tasks' owner and retries, the same for every PatentML DAG."""
        return {"owner": "patentml", "retries": self.task_retries, "retry_delay": dt.timedelta(minutes=retry_minutes),
                **({"retry_exponential_backoff": True} if backoff else {})}

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
            only_if_changed=env_bool("RETRAIN_ONLY_IF_CHANGED", None),  # type: ignore[arg-type]
            blend=env_bool("RETRAIN_BLEND", True),
            train_retry_delay_seconds=env_int("TRAIN_RETRY_DELAY_SECONDS", 600),
            retrain_deadline_hours=env_int("RETRAIN_DEADLINE_HOURS", 8),
            approval_timeout_hours=env_int("APPROVAL_TIMEOUT_HOURS", 24, minimum=1),
        )


#: Run types that start without a person: they skip an unchanged corpus unless ``only_if_changed`` is false.
UNATTENDED_RUNS = ("scheduled", "asset_triggered", "asset_materialization", "backfill")


def skips_unchanged(only_if_changed: bool | None, run_type: str | None) -> bool:
    """Whether a retrain run skips training when the snapshot did not change.

    ``only_if_changed`` true or false decides; empty (the default) means: the nightly schedule and
    asset-triggered runs skip (nothing new to learn from), a manual trigger trains.
    """
    if only_if_changed is not None:
        return bool(only_if_changed)
    return str(run_type or "").lower().split(".")[-1] in UNATTENDED_RUNS


def check_variant(name: str, where: str = "variants") -> str:
    """``name`` if the registry can train it (a blend is made by the blend step, not listed here)."""
    try:
        spec = registry.parse_variant(name)
    except ConfigError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    if spec.backend_class().built_from_runs:
        raise ConfigurationError(f"{where}: {name!r} is built from other runs by the blend step; "
                                 f"choose from {', '.join(registry.known_variants(trainable=True))}")
    return spec.name


def build_variants(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The training specs of one retrain run, from its (already schema-validated) Params.

    ``variants`` wins when it is not empty; otherwise encoders x losses x datasets, where loss-free
    encoders appear once per dataset. Each spec carries everything a training task needs, so the
    mapped tasks do not read Params themselves.
    """
    explicit = [str(v).strip().lower() for v in params.get("variants") or [] if str(v).strip()]
    if explicit:
        names = [check_variant(v, where="Param 'variants'") for v in explicit]
    else:
        encoders = list(params.get("encoders") or [])
        losses = list(params.get("losses") or [])
        datasets = list(params.get("datasets") or [])
        if not encoders or not datasets:
            raise ConfigurationError("choose at least one encoder and one dataset (or list 'variants')")
        if not losses and any(registry.backend_class(e).has_loss for e in encoders if e in registry.BACKENDS):
            raise ConfigurationError(f"{', '.join(e for e in encoders if registry.backend_class(e).has_loss)} "
                                     f"need at least one loss ({', '.join(registry.LOSSES)})")
        try:
            names = [check_variant(v, where="Param 'encoders'") for v in registry.matrix(encoders, losses, datasets)]
        except ConfigError as exc:
            raise ConfigurationError(f"Params 'encoders'/'losses'/'datasets': {exc}") from None
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
    encoder = registry.parse_variant(variant).encoder
    scoped = {}
    plain = {}
    for key, value in overrides.items():
        if registry.is_model_key(key):
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"Param 'model_overrides': {key!r} names a model, so its value must be "
                                         f"an object of settings, got {value!r}")
            scoped[key] = dict(value)
        else:
            plain[key] = value
    return {**plain, **scoped.get(encoder, {}), **scoped.get(variant, {})}
