"""Alembic environment: migrations run on the connection PatentML hands over, under an advisory lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from patentml.db import locks
from patentml.db.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - PatentML always passes a connection
    raise RuntimeError("Run migrations through 'patentml db upgrade', which passes the connection")

context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": locks.MIGRATION})
with context.begin_transaction():
    context.run_migrations()
