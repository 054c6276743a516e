"""Schema and migrations: Alembic from empty matches the models; the embedded server is reused."""

from __future__ import annotations


from sqlalchemy import text


def test_migrations_from_empty_match_models(settings, engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from patentml.db.migrate import current_revision, head_revision
    from patentml.db.models import Base

    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    with engine.connect() as conn:
        tables = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    assert {"patents", "patent_labels", "ingest_batches", "rejected_records"} <= tables


def test_upgrade_is_idempotent_and_downgrade_works(settings, engine) -> None:
    from patentml.db.migrate import downgrade, head_revision, upgrade

    assert upgrade(engine) == head_revision()
    assert downgrade(engine, "base") == ""
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('patents')")).scalar() is None
    assert upgrade(engine) == head_revision()


def test_label_check_constraint_refuses_non_subclass(settings, engine) -> None:
    import sqlalchemy.exc
    import pytest

    with engine.begin() as conn:
        conn.execute(text("INSERT INTO patents (patent_id, abstract, source, content_hash) VALUES ('US1', 'a', 's', 'h')"))
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO patent_labels VALUES ('US1', 'CPC', 'XYZ1', 'X', 0, true)")
            )
