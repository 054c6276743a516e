"""Subcommands about the data: the database, ingest and dataset snapshots."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from patentml.cli.common import engine_for as _engine
from patentml.cli.common import settings_for as _settings

log = logging.getLogger("patentml")


# --- db ---------------------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from patentml.db.migrate import upgrade

    engine = _engine(args, migrate=False)
    print(f"schema at revision {upgrade(engine, args.revision)}")
    return 0


def cmd_db_url(args: argparse.Namespace) -> int:
    from patentml.db.engine import database_url

    print(database_url(_settings(args)))
    return 0


def cmd_db_shell(args: argparse.Namespace) -> int:
    import shutil

    from patentml.db import embedded
    from patentml.db.engine import database_url, libpq_url

    url, password = split_password(libpq_url(database_url(_settings(args))))
    psql = str(embedded.psql_path())
    if not os.path.exists(psql):
        psql = shutil.which("psql") or psql
    sys.stdout.flush()
    # The password goes through the environment: argv is visible to every user of the machine (ps).
    env = {**os.environ, **({"PGPASSWORD": password} if password is not None else {})}
    os.execve(psql, [psql, url, *args.psql_args], env)
    return 0  # pragma: no cover - execve does not return


def split_password(url: str) -> tuple[str, str | None]:
    """A libpq URL without its password (user part or ``password=`` parameter), and the password."""
    from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password is not None else None
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{quote(unquote(parts.username or ''), safe='')}@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k != "password"]
    password = next((v for k, v in query if k == "password"), password)
    return urlunsplit(parts._replace(query=urlencode(kept, safe="/"))), password


def cmd_db_stop(args: argparse.Namespace) -> int:
    from patentml.db import embedded

    settings = _settings(args)
    if not settings.embedded:
        print("PATENTML_DATABASE_URL is set: there is no embedded server to stop")
        return 0
    stopped = embedded.stop(settings.pg_dir)
    print("embedded Postgres stopped" if stopped else "embedded Postgres was not running")
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    from patentml.db import corpus

    with _engine(args).connect() as conn:
        counts = corpus.counts(conn)
    for name, value in counts.items():
        print(f"{name:>18}: {value:,}")
    return 0


# --- ingest -----------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from patentml.ingest import ingest
    from patentml.ingest.status import summary_lines

    summaries = ingest(_engine(args), args.sources, fmt=args.format, progress=not args.quiet, strict=False)
    print("\n".join(summary_lines(summaries)))
    if args.json:
        print(json.dumps([s.as_dict() for s in summaries]))
    if not all(s.ok for s in summaries):  # every other source was ingested; the status says some were not
        print("patentml: error: some sources failed or were read only in part (see above)", file=sys.stderr)
        return 1
    return 0


# --- splits, train, evaluate, report ---------------------------------------------------------


def cmd_splits_rebuild(args: argparse.Namespace) -> int:
    from patentml.splits import format_stats, rebuild

    settings = _settings(args)
    info = rebuild(_engine(args), args.label_scheme or settings.label_scheme)
    state = "new" if info.changed else "unchanged corpus, reused"
    print(f"snapshot {info.snapshot_id} ({info.label_scheme} labels, {state})")
    print(format_stats(info.stats))
    return 0
