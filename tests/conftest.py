"""Shared fixtures: one real Postgres per test session (embedded, or PATENTML_TEST_DATABASE_URL), a fresh
database per test module, and the shared sample data when it is there."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Iterator

import pytest

# Airflow reads its config at import; keep it local and example-free before any test imports it.
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared_data_files() -> list[Path]:
    return sorted(SHARED_DATA.glob("*.jsonl")) if SHARED_DATA.is_dir() else []


needs_shared = pytest.mark.skipif(
    not shared_data_files(),
    reason=f"needs the sample patents in {SHARED_DATA} (../shared/data beside the checkout)",
)


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Postgres server's maintenance database, for creating per-module databases."""
    from patentml.db import embedded

    configured = os.environ.get("PATENTML_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    pg_dir = tmp_path_factory.mktemp("pg")
    url = embedded.server_uri(pg_dir, database="postgres")
    try:
        yield url
    finally:
        embedded.stop(pg_dir)


def _with_db(url: str, name: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url)._replace(path="/" + name).geturl()


def make_database(admin_url: str, label: str) -> str:
    """Create an empty database and return its URL."""
    import psycopg2

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", label.lower())[-40:] + "_" + uuid.uuid4().hex[:6]
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return _with_db(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    import psycopg2

    from patentml.db.engine import dispose_engines

    dispose_engines()
    name = url.rsplit("/", 1)[1].split("?")[0]
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="module")
def db_url(pg_admin_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for this test module."""
    url = make_database(pg_admin_url, request.module.__name__)
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Settings pointing at this module's database and a private home/model store."""
    from patentml.settings import Settings, set_settings

    home = tmp_path_factory.mktemp("home")
    s = Settings(home=home, database_url=db_url, store_uri=(home / "models").as_uri())
    set_settings(s)
    yield s
    set_settings(None)


@pytest.fixture(scope="module")
def engine(settings):  # type: ignore[no-untyped-def]
    """An engine on this module's database with the schema migrated to head."""
    from patentml.db.engine import get_engine
    from patentml.db.migrate import upgrade

    eng = get_engine(settings)
    upgrade(eng)
    return eng


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One real SeaweedFS S3 server (127.0.0.1, credentials enforced) for the session; tests make buckets."""
    from tests.s3server import SeaweedS3, SeaweedUnavailable, find_weed

    try:
        find_weed()
    except SeaweedUnavailable as exc:
        pytest.skip(str(exc))
    with SeaweedS3.start(tmp_path_factory.mktemp("seaweed")) as server:
        yield server
