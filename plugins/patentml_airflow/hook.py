"""Turn the Airflow Connections ``patentml_db`` (Postgres) and ``patentml_s3`` (AWS/S3) into PatentML settings.

Connections are fetched when :meth:`PatentMLHook.get_settings` is called (inside a task, or per
request in the UI), never at import or DAG-parse time. A missing Connection is not an error: the
``PATENTML_*`` environment (and its embedded defaults) fills in, so the same DAGs run on a laptop
with nothing configured and in the compose stack with Connections set by the init service.

``patentml_s3`` extras understood: ``endpoint_url`` (also ``service_config.s3.endpoint_url`` or
legacy ``host``), ``region_name``, and ``store_uri`` (``s3://bucket/prefix`` for the model store;
else ``PATENTML_STORE_URI``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from patentml.settings import Settings

log = logging.getLogger(__name__)

DB_CONN_ID = "patentml_db"
S3_CONN_ID = "patentml_s3"

#: libpq parameters a ``patentml_db`` extra may carry into the URL; provider-only keys are left out.
LIBPQ_EXTRAS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "sslpassword",
        "connect_timeout",
        "application_name",
        "options",
        "target_session_attrs",
        "gssencmode",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "channel_binding",
    }
)


def database_url_from_connection(conn: Any) -> str:
    """A ``postgresql://`` URL from a Postgres Connection; a host starting with ``/`` is a socket folder."""
    from sqlalchemy.engine import URL

    query: dict[str, str] = {}
    host = conn.host or None
    if host and host.startswith("/"):
        query["host"] = host  # unix socket folder (the embedded server): libpq takes it as a parameter
        host = None
    extra = conn.extra_dejson or {}
    for key, value in extra.items():
        if key in LIBPQ_EXTRAS and value not in (None, ""):
            query[key] = str(value)
    if not conn.schema:
        raise ValueError(
            f"Connection {conn.conn_id!r} names no database: set its 'schema' field (e.g. patentml)"
        )
    url = URL.create(
        "postgresql",
        username=conn.login or None,
        password=conn.password or None,
        host=host,
        port=int(conn.port) if conn.port else None,
        database=conn.schema,
        query=query,
    )
    return url.render_as_string(hide_password=False)


def s3_settings_from_connection(conn: Any) -> dict[str, Any]:
    """``Settings`` keyword arguments from an AWS Connection pointing at any S3 server."""
    extra = conn.extra_dejson or {}
    service = (extra.get("service_config") or {}).get("s3") or {}
    values: dict[str, Any] = {
        "s3_access_key_id": conn.login or extra.get("aws_access_key_id") or None,
        "s3_secret_access_key": conn.password or extra.get("aws_secret_access_key") or None,
        "s3_endpoint_url": service.get("endpoint_url") or extra.get("endpoint_url") or extra.get("host") or None,
        "s3_region": extra.get("region_name") or None,
        "store_uri": extra.get("store_uri") or None,
    }
    return {key: value for key, value in values.items() if value is not None}


class PatentMLHook(BaseHook):
    """PatentML settings and database engine from Airflow Connections, with the environment as fallback.

    ``overrides`` (e.g. a run's ``promotion_margin`` or ``device`` Param) win over both; ``None``
    values are ignored so unset Params keep the configured value.
    """

    conn_name_attr = "db_conn_id"
    default_conn_name = DB_CONN_ID
    conn_type = "postgres"
    hook_name = "PatentML"

    def __init__(self, db_conn_id: str = DB_CONN_ID, s3_conn_id: str = S3_CONN_ID, **overrides: Any) -> None:
        super().__init__()
        self.db_conn_id = db_conn_id
        self.s3_conn_id = s3_conn_id
        self.overrides = {key: value for key, value in overrides.items() if value is not None}
        self._settings: Settings | None = None

    def _optional_connection(self, conn_id: str) -> Any | None:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(conn_id)
        except AirflowNotFoundException:
            log.info("Connection %r is not defined: using PATENTML_* environment settings", conn_id)
            return None

    def settings_values(self) -> dict[str, Any]:
        """The values the Connections contribute (no environment, no overrides)."""
        values: dict[str, Any] = {}
        db = self._optional_connection(self.db_conn_id)
        if db is not None:
            values["database_url"] = database_url_from_connection(db)
        s3 = self._optional_connection(self.s3_conn_id)
        if s3 is not None:
            values.update(s3_settings_from_connection(s3))
        return values

    def get_settings(self) -> "Settings":
        """Settings = environment < Connections < overrides; also made the process-wide settings."""
        if self._settings is None:
            from patentml.settings import Settings, set_settings

            self._settings = Settings.from_env(**{**self.settings_values(), **self.overrides})
            set_settings(self._settings)
            log.info("PatentML settings: %s", self._settings.redacted())
        return self._settings

    def get_engine(self, migrate: bool = True) -> "Engine":
        """A pooled engine on the PatentML database, the schema brought to head first when ``migrate``."""
        from patentml.db.engine import get_engine

        engine = get_engine(self.get_settings())
        if migrate:
            from patentml.db.migrate import ensure_schema

            ensure_schema(engine)
        return engine

    def test_connection(self) -> tuple[bool, str]:
        """What the Connections form's Test button calls."""
        try:
            from sqlalchemy import text

            with self.get_engine(migrate=False).connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # report, do not raise: this is a UI probe
            return False, str(exc)
        return True, "PatentML database reachable"
