"""Secrets stay secret: settings print redacted, and psql gets the password through its environment."""

from __future__ import annotations

import os
import subprocess
import sys

from patentml.settings import Settings


def test_settings_repr_and_redacted_hide_every_secret() -> None:
    s = Settings(database_url="postgresql://alice:pw-in-user@db:5432/x?sslpassword=pw-in-query&sslmode=require",
                 s3_access_key_id="AKIA-visible", s3_secret_access_key="s3-secret")
    for text in (repr(s), str(s), str(s.redacted())):
        assert "pw-in-user" not in text and "pw-in-query" not in text and "s3-secret" not in text, text
    red = s.redacted()
    assert red["database_url"] == "postgresql://alice:***@db:5432/x?sslpassword=***&sslmode=require"
    assert red["s3_secret_access_key"] == "***" and red["s3_access_key_id"] == "AKIA-visible"


def test_psql_gets_the_url_without_its_password() -> None:
    from patentml.cli.data import split_password

    assert split_password("postgresql://al%40ce:p%40ss@h:5/db?sslmode=require") == (
        "postgresql://al%40ce@h:5/db?sslmode=require", "p@ss")
    assert split_password("postgresql://u@/db?host=/tmp/s&password=qpw") == ("postgresql://u@/db?host=/tmp/s", "qpw")
    assert split_password("postgresql://u@h/db") == ("postgresql://u@h/db", None)


def test_db_shell_keeps_the_password_out_of_argv(db_url: str) -> None:
    """psql's own shell escape prints psql's command line (from /proc) and its PGPASSWORD."""
    with_password = db_url.replace("postgresql://postgres:@", "postgresql://postgres:not-in-argv@")
    probe = r"\! tr '\0' ' ' < /proc/$PPID/cmdline; echo; echo env=$PGPASSWORD"
    out = subprocess.run([sys.executable, "-m", "patentml.cli", "db", "shell", "-c", probe], capture_output=True,
                         text=True, env={**os.environ, "PATENTML_DATABASE_URL": with_password}, timeout=120)
    assert out.returncode == 0, out.stderr
    argv, env = out.stdout.strip().splitlines()[-2:]
    assert "psql" in argv and "postgresql://postgres@" in argv and "not-in-argv" not in argv
    assert env == "env=not-in-argv"
