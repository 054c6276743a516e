"""Subcommands that put the champion to work: predict, score (suggestions into Postgres), suggestions (export), serve."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

from patentml.cli.common import engine_for as _engine
from patentml.cli.common import settings_for as _settings
from patentml.exceptions import ConfigError

if TYPE_CHECKING:
    from patentml.predict_io import Record

log = logging.getLogger("patentml")

#: A lone argument that looks like a file name rather than an abstract (no spaces, a data file's extension).
FILE_LIKE = re.compile(r"^\S+\.(jsonl|ndjson|json|txt|text|csv|tsv|xml|gz|zip)$", re.IGNORECASE)


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date: use YYYY-MM-DD") from None


def add_commands(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """The parsers of this module's subcommands."""
    from patentml.predict_io import INPUT_FORMATS, OUTPUT_FORMATS

    def model_choice(p: argparse.ArgumentParser, artifact: bool = True) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--model", metavar="ID", help="a model id in the store (default: the champion)")
        if artifact:
            group.add_argument("--artifact", metavar="DIR",
                               help="a local model folder (e.g. <home>/runs/<run>/artifact)")

    p = add(sub, "predict", cmd_predict,
            "predict CPC subclasses for abstracts, files or stdin: JSON lines {id, labels, scores} or CSV")
    p.add_argument("text", nargs="*", metavar="TEXT|FILE",
                   help="abstract(s) to classify, or file(s) to read (an existing path is read as a file); "
                        "'-' reads stdin")
    p.add_argument("--file", "-f", metavar="FILE",
                   help="JSON Lines with id and abstract, or one abstract per line; '-' for stdin")
    p.add_argument("--input-format", choices=INPUT_FORMATS, default=None,
                   help="format of files and stdin (default: detected from the first line)")
    p.add_argument("--format", "--output-format", dest="output_format", default="jsonl",
                   choices=[*OUTPUT_FORMATS, "auto", "text"], metavar="{jsonl,csv}",
                   help="output: JSON lines (default) or CSV, one row per suggested label "
                        "(id, rank, subclass, score, selected); the old spellings auto/text name the input format")
    model_choice(p)
    p.add_argument("--top-k", type=int, default=5, help="scores to print per patent (default 5)")
    p.add_argument("--explain", action="store_true",
                   help="say why, for each label named: the words, n-grams or training patents behind it")
    p.add_argument("--batch-size", type=int, help="patents per forward pass (default: the model's own)")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar on stderr (auto: on for files)")

    p = add(sub, "score", cmd_score,
            "write the champion's suggestions for every patent that has none from it into patent_suggestions")
    model_choice(p, artifact=False)
    p.add_argument("--all", action="store_true", help="rescore every patent, replacing the model's earlier rows")
    p.add_argument("--since", type=_date, metavar="DATE", help="only patents first stored on or after DATE")
    p.add_argument("--top-k", type=int, default=5, help="suggestions per patent (default 5; selected labels "
                                                        "beyond them are stored too)")
    p.add_argument("--commit-every", type=int, default=1024, metavar="N",
                   help="patents scored and committed together (default 1024); a crash loses at most one batch")
    p.add_argument("--reuse-vectors", action="store_true",
                   help="take MiniLM sentence vectors from the Postgres cache training filled (much faster; "
                        "float16, so scores can differ from `predict` in the 4th decimal)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")

    p = add(sub, "suggestions", cmd_suggestions, "export a model's suggestions from patent_suggestions")
    model_choice(p, artifact=False)
    p.add_argument("--since", type=_date, metavar="DATE", help="only patents first stored on or after DATE")
    p.add_argument("--selected", action="store_true", help="only the labels the model's decision rule picks")
    p.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS, default="csv",
                   help="csv (default, with a header) or jsonl")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")

    p = add(sub, "serve", cmd_serve, "HTTP prediction service: /v1/predict, /v1/model, /healthz, /metrics, /docs")
    p.add_argument("--host", help="address to listen on (PATENTML_SERVE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (PATENTML_SERVE_PORT, default 8000)")
    model_choice(p)


# --- predict ----------------------------------------------------------------------------------


def _sources(arguments: list[str]) -> tuple[list[str], list[Path]]:
    """Split positional arguments into abstracts and files: an existing path is a file; a lone word that
    looks like a file name but names none is an error rather than an abstract to classify."""
    texts, files = [], []
    for arg in arguments:
        path = Path(arg).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            raise ConfigError(f"{arg} is a folder: give the files in it, e.g. {arg.rstrip('/')}/*.jsonl")
        elif FILE_LIKE.match(arg) or (("/" in arg or "\\" in arg) and not any(c.isspace() for c in arg)):
            raise ConfigError(f"no such file: {arg}. To classify that text itself, pipe it: "
                              f"echo {json.dumps(arg)} | patentml predict -")
        else:
            texts.append(arg)
    if texts and files:
        raise ConfigError("give abstracts or files, not both")
    return texts, files


def _argument_record(number: int, text: str) -> "Record":
    """An abstract given as an argument; bytes that were not UTF-8 (kept by Python as surrogates) are an error."""
    from patentml.predict_io import Record
    from patentml.textio import undecodable

    raw = os.fsencode(text)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Record(number, error=f"argument {number}: not valid UTF-8: {undecodable(raw, exc)}")
    return Record(number, text)


@contextmanager
def _utf8_stdout() -> Iterator[TextIO]:
    """stdout as UTF-8 whatever the locale or PYTHONIOENCODING say (JSON lines are UTF-8). A lone surrogate
    past the input checks is written as its ``\\udXXX`` escape: the output stays UTF-8 and the run goes on."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stand-in (tests, embedding): it decides
        yield sys.stdout
        return
    sys.stdout.flush()
    out = io.TextIOWrapper(buffer, encoding="utf-8", errors="backslashreplace", newline="",
                           line_buffering=sys.stdout.line_buffering)
    try:
        yield out
    finally:
        out.flush()
        out.detach()  # sys.stdout keeps its buffer open


def cmd_predict(args: argparse.Namespace) -> int:
    from patentml.predict import Predictor

    settings = _settings(args)
    input_format, output_format = args.input_format, args.output_format
    if output_format in ("auto", "text"):  # the spelling of --format before it named the output
        log.warning("--format %s names the input format: use --input-format %s", output_format, output_format)
        input_format, output_format = input_format or output_format, "jsonl"
    input_format = input_format or "auto"
    if args.explain and output_format != "jsonl":
        raise ConfigError("--explain writes JSON lines: explanations do not fit CSV rows")
    arguments = list(args.text or [])
    stdin = arguments == ["-"] or args.file == "-"
    texts, files = ([], []) if arguments == ["-"] else _sources(arguments)
    if args.file and args.file != "-":
        path = Path(args.file)
        if not path.is_file():
            raise ConfigError(f"input file {path} does not exist")
        files.append(path)
    if texts and (files or stdin):
        raise ConfigError("give TEXT arguments or --file, not both")
    if not (texts or files or stdin):
        if sys.stdin.isatty():
            raise ConfigError("give TEXT, a FILE (JSON Lines or one abstract per line), or pipe text on stdin")
        stdin = True
    if args.top_k < 0:
        raise ConfigError("--top-k must be 0 or more")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    predictor = Predictor.open(settings, model_id=args.model, artifact=args.artifact)
    log.info("Predicting with %s", predictor.source)
    options = {"top_k": args.top_k, "batch_size": args.batch_size, "explain": args.explain}
    with _utf8_stdout() as out:
        if texts:
            return _predict_texts(predictor, texts, out, output_format, options)
        summary = _predict_inputs(predictor, files, stdin, out, input_format, output_format,
                                  args.progress, options)
    if summary["errors"]:
        log.warning("%d of %d lines could not be predicted (see their \"error\" fields)", summary["errors"],
                    summary["lines"])
    return 0


def _predict_texts(predictor: Any, texts: list[str], out: TextIO, output_format: str,
                   options: dict[str, Any]) -> int:
    from patentml.predict_io import Writer

    writer = Writer(out, output_format)
    records = [_argument_record(i, t) for i, t in enumerate(texts, 1)]
    writer.write_all(predictor.predict_records(records, ranked=writer.ranked, **options))
    return 0 if writer.errors < len(texts) else 1


def _predict_inputs(predictor: Any, files: list[Path], stdin: bool, out: TextIO, input_format: str,
                    output_format: str, progress: str, options: dict[str, Any]) -> dict[str, int]:
    """stdin, then each file, read the same way: bytes, split into lines, each decoded on its own."""
    from patentml.predict_io import count_lines, predict_stream

    summary = {"lines": 0, "errors": 0}
    if stdin:
        summary = predict_stream(predictor, sys.stdin.buffer, out, fmt=input_format, output_format=output_format,
                                 progress=progress == "on", **options)
    show = progress != "off"
    for path in files:
        total = count_lines(path) if show else None
        with open(path, "rb") as fh:
            done = predict_stream(predictor, fh, out, fmt=input_format, output_format=output_format,
                                  total=total, progress=show, **options)
        summary = {k: summary[k] + done[k] for k in summary}
    return summary


# --- score, suggestions, serve ------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    from patentml.suggest import score_champion

    summary = score_champion(_settings(args), _engine(args), model_id=args.model, rescore=args.all,
                             since=args.since, top_k=args.top_k, commit_every=args.commit_every,
                             reuse_vectors=args.reuse_vectors, progress=not args.quiet)
    print(summary.line())
    if args.json:
        print(json.dumps(summary.as_dict()))
    return 0


def cmd_suggestions(args: argparse.Namespace) -> int:
    import csv

    from patentml.db import suggestions
    from patentml.predict_io import csv_value

    settings = _settings(args)
    model_id = args.model
    if model_id is None:
        from patentml.store import open_store

        store = open_store(settings)
        model_id = store.get_pointer()
        if model_id is None:
            raise ConfigError(f"{store.uri} has no champion: give --model ID")
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    n = 0
    try:
        writer = csv.writer(out, lineterminator="\n") if args.output_format == "csv" else None
        if writer is not None:
            writer.writerow(suggestions.COLUMNS)
        with _engine(args).connect() as conn:
            for row in suggestions.stream(conn, model_id, since=args.since, selected_only=args.selected):
                n += 1
                if writer is not None:
                    writer.writerow([csv_value(row[c].isoformat() if c == "created_at" else row[c])
                                     for c in suggestions.COLUMNS])
                else:
                    out.write(json.dumps({**row, "created_at": row["created_at"].isoformat()}) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if n == 0:
        log.warning("no suggestions from %s%s: run `patentml score` first", model_id,
                    f" for patents stored since {args.since}" if args.since else "")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from patentml.serve import serve

    settings = _settings(args)
    settings = settings.replace(serve_host=args.host or settings.serve_host, serve_port=args.port or settings.serve_port)
    serve(settings, model_id=args.model, artifact=args.artifact)
    return 0
