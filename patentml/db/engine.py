"""Database URLs and SQLAlchemy engines, for the embedded server or any configured Postgres."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from patentml.exceptions import DatabaseError
from patentml.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


def database_url(settings: Settings | None = None) -> str:
    """The libpq URL of the configured database; starts the embedded server when none is set."""
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url
    from patentml.db import embedded

    return embedded.server_uri(settings.pg_dir)


def libpq_url(url: str) -> str:
    """``postgresql+driver://`` -> ``postgresql://`` (what psql and psycopg2.connect accept)."""
    scheme, sep, rest = url.partition("://")
    return "postgresql://" + rest if sep and scheme.startswith("postgresql") else url


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://``; an explicit driver is kept."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


_ENGINES: dict[str, "Engine"] = {}


def _engine_for(url: str) -> "Engine":
    engine = _ENGINES.get(url)
    if engine is None:
        from sqlalchemy import create_engine

        engine = _ENGINES[url] = create_engine(sqlalchemy_url(url), pool_pre_ping=True)
    return engine


def get_engine(settings: Settings | None = None) -> "Engine":
    """A pooled engine for the configured database (one per URL per process)."""
    url = database_url(settings)
    engine = _engine_for(url)
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise DatabaseError(
            f"Cannot connect to Postgres at {Settings(database_url=libpq_url(url)).redacted()['database_url']}: "
            f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. "
            "Check PATENTML_DATABASE_URL, or unset it to use the embedded server."
        ) from exc
    return engine


def dispose_engines() -> None:
    """Close pooled connections and forget the engines (tests; after fork)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
