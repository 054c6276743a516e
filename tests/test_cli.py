"""The CLI answers --help fast without heavy imports; settings are validated; the embedded server is shared."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patentml.exceptions import ConfigError
from patentml.settings import Settings

SUBCOMMANDS = [[], ["db"], ["db", "upgrade"], ["db", "url"], ["db", "shell"], ["db", "stop"], ["db", "status"],
               ["ingest"], ["splits", "rebuild"], ["train"], ["evaluate"], ["report"], ["promote"], ["predict"],
               ["models", "list"], ["variants"]]


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "patentml.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, patentml.cli as c\n"
        "p = c.build_parser()\n"
        "heavy = [m for m in ('torch', 'transformers', 'sklearn', 'sqlalchemy', 'numpy', 'boto3') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=lambda a: " ".join(a) or "top")
def test_every_subcommand_has_help(args: list[str]) -> None:
    """How fast they answer is benchmarks/cli.py's job; here: each answers, with a usage line."""
    out = _run(*args, "--help")
    assert out.returncode == 0 and f"usage: patentml {' '.join(args)}".rstrip() in out.stdout, out.stderr


def test_train_choices_and_the_variants_listing_come_from_the_registry() -> None:
    from patentml.variants import known_variants

    listing = _run("variants")
    assert listing.returncode == 0
    for name in known_variants():
        assert name in listing.stdout
    bad = _run("train", "--variant", "glove-full")
    assert bad.returncode == 2 and "invalid choice: 'glove-full'" in bad.stderr


def test_settings_are_validated_with_clear_messages() -> None:
    with pytest.raises(ConfigError, match="PATENTML_LABEL_SCHEME='ECLA'"):
        Settings.from_env({"PATENTML_LABEL_SCHEME": "ECLA"})
    with pytest.raises(ConfigError, match="PATENTML_STORE_URI.*file:// or s3://"):
        Settings.from_env({"PATENTML_STORE_URI": "ftp://x"})
    with pytest.raises(ConfigError, match="PATENTML_THREADS='two' is not a valid int"):
        Settings.from_env({"PATENTML_THREADS": "two"})
    s = Settings.from_env({"PATENTML_HOME": "/tmp/x", "PATENTML_THREADS": "3"}, threads=None)
    assert s.home == Path("/tmp/x") and s.threads == 3 and s.resolved_store_uri == "file:///tmp/x/models"
    assert Settings(database_url="postgresql://u:secret@h/db").redacted()["database_url"] == "postgresql://u:***@h/db"


def test_a_configured_url_never_starts_the_embedded_server(tmp_path: Path) -> None:
    out = _run("db", "url", env={"PATENTML_HOME": str(tmp_path), "PATENTML_DATABASE_URL": "postgresql://u@h:5/db"})
    assert out.returncode == 0 and out.stdout.strip() == "postgresql://u@h:5/db"
    assert not (tmp_path / "postgres").exists()


def test_user_errors_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    out = _run("ingest", str(tmp_path / "nope.jsonl"), env={"PATENTML_DATABASE_URL": "postgresql://u@127.0.0.1:1/x"})
    assert out.returncode == 1 and out.stderr.startswith("patentml: error:") and "Traceback" not in out.stderr


def test_concurrent_commands_share_one_embedded_server_and_half_init_is_redone(tmp_path: Path) -> None:
    from patentml.db import embedded

    home = tmp_path / "home"
    (home / "postgres" / "data").mkdir(parents=True)  # a leftover of an interrupted initdb: no marker
    (home / "postgres" / "data" / "junk").write_text("half-written")
    env = {"PATENTML_HOME": str(home), "PATENTML_DATABASE_URL": ""}
    procs = [subprocess.Popen([sys.executable, "-m", "patentml.cli", "db", "url"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, **env}) for _ in range(3)]
    try:
        urls = {p.communicate(timeout=120)[0].strip() for p in procs}
        assert all(p.returncode == 0 for p in procs)
        assert len(urls) == 1 and "host=" in urls.pop()
        assert not (home / "postgres" / "data" / "junk").exists()
        pids = (home / "postgres" / "data" / "postmaster.pid").read_text().split()[0]
        started = time.perf_counter()
        assert _run("db", "url", env=env).returncode == 0
        print(f"second command reusing the server: {time.perf_counter() - started:.2f} s")
        assert (home / "postgres" / "data" / "postmaster.pid").read_text().split()[0] == pids
    finally:
        embedded.stop(home / "postgres")
    assert not embedded.is_running(home / "postgres")


def test_db_shell_runs_the_bundled_psql_on_the_configured_database(db_url: str) -> None:
    out = _run("db", "shell", "-c", "select 40 + 2 as answer", env={"PATENTML_DATABASE_URL": db_url})
    assert out.returncode == 0, out.stderr
    assert "answer" in out.stdout and "42" in out.stdout
