"""Alembic environment: migrations run on the connection PatentML hands over, under an advisory lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from patentml.db.models import Base

# Any two processes migrating at once wait for each other instead of racing on DDL.
MIGRATION_LOCK = 7_243_901

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - PatentML always passes a connection
    raise RuntimeError("Run migrations through 'patentml db upgrade', which passes the connection")

context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
with context.begin_transaction():
    context.run_migrations()
