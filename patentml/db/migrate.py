"""Create or upgrade the schema with Alembic; commands call :func:`ensure_schema` before touching tables."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from patentml.exceptions import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: "Connection | None" = None) -> "Config":
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: "Engine") -> str | None:
    from sqlalchemy import text

    with engine.connect() as conn:
        exists = conn.execute(text("SELECT to_regclass('alembic_version')")).scalar()
        if exists is None:
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: "Engine", revision: str = "head") -> str:
    """Migrate the database to ``revision``; returns the revision it ends at."""
    from alembic import command

    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)
    except Exception as exc:
        raise DatabaseError(f"Migrating the PatentML schema failed: {exc}") from exc
    return current_revision(engine) or ""


def downgrade(engine: "Engine", revision: str) -> str:
    """Migrate the database down to ``revision`` (``base`` drops every PatentML table)."""
    from alembic import command

    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), revision)
    except Exception as exc:
        raise DatabaseError(f"Downgrading the PatentML schema failed: {exc}") from exc
    return current_revision(engine) or ""


def ensure_schema(engine: "Engine") -> None:
    """Upgrade to head when the schema is missing or behind (cheap when it is current)."""
    if current_revision(engine) != head_revision():
        log.info("Creating/upgrading the PatentML schema")
        upgrade(engine)
