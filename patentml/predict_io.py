"""Prediction input and output: records from JSON Lines or plain text; JSON lines or CSV out.

JSON lines are one object per input line (``{"id", "labels", "scores"}``, see :mod:`patentml.predict`).
CSV is long, one row per suggested label (``id, rank, subclass, score, selected``, the columns of
``patent_suggestions``), so a spreadsheet or ``pandas.read_csv`` needs no parsing of nested fields;
an input line that could not be used is one row with its ``error``.

Input is read as bytes and each line decoded strictly as UTF-8 on its own, with the line cap of
:mod:`patentml.textio`: a bad byte, a lone-surrogate id or a newline-free gigabyte costs one error
line, never the stream, and nothing is echoed back that UTF-8 cannot carry.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, TextIO

from patentml.exceptions import ConfigError
from patentml.textio import BOM, MAX_LINE_BYTES, OverlongLine, iter_lines, lone_surrogate, undecodable

if TYPE_CHECKING:
    from patentml.predict import Predictor

#: Input formats of ``patentml predict``: detected from the first line, JSON Lines, one abstract per line.
INPUT_FORMATS = ("auto", "jsonl", "text")
#: Output formats of ``patentml predict`` and ``patentml suggestions``.
OUTPUT_FORMATS = ("jsonl", "csv")
#: Columns of ``predict --format csv``: the suggestion columns of ``patent_suggestions``, and what went wrong.
CSV_COLUMNS = ("id", "rank", "subclass", "score", "selected", "warning", "error")


@dataclass
class Record:
    """One input line: an id and a text, or the error that makes it unusable."""

    id: Any
    text: str | None = None
    error: str | None = None


# --- input -------------------------------------------------------------------------------------


def _json_record(line: str, lineno: int) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return Record(lineno, error=f"line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        return Record(lineno, error=f"line {lineno}: expected a JSON object with \"id\" and \"abstract\"")
    pid = obj.get("id", lineno)
    if pid is None:
        pid = lineno
    # The id is echoed back: one that UTF-8 cannot carry (JSON "\ud800") is replaced by the line number.
    problem = lone_surrogate(pid if isinstance(pid, str) else json.dumps(pid, ensure_ascii=False))
    if problem is not None:
        return Record(lineno, error=f'line {lineno}: "id" is not valid Unicode: {problem}')
    text = obj.get("abstract", obj.get("text"))
    if text is None:
        return Record(pid, error=f"line {lineno}: no \"abstract\" field")
    if not isinstance(text, str):
        return Record(pid, error=f"line {lineno}: \"abstract\" must be a string, got {type(text).__name__}")
    return Record(pid, text)


def _record(lineno: int, raw: bytes | OverlongLine, fmt: str) -> Record:
    """The record of one input line, or the error that makes it unusable."""
    if isinstance(raw, OverlongLine):
        return Record(lineno, error=f"line {lineno}: {raw.describe(MAX_LINE_BYTES)}")
    try:
        line = raw.decode("utf-8").rstrip("\r\n")  # strict: no surrogate can come out of it
    except UnicodeDecodeError as exc:
        return Record(lineno, error=f"line {lineno}: not valid UTF-8: {undecodable(raw, exc)} of the line")
    if fmt == "text":
        return Record(lineno, line)
    if not line.strip():
        return Record(lineno, error=f"line {lineno}: empty line")
    return _json_record(line, lineno)


def read_records(stream: BinaryIO, fmt: str = "auto") -> Iterator[Record]:
    """Records from a binary stream: ``jsonl``, ``text`` (one abstract per line), or ``auto``.

    ``auto`` looks at the first non-blank line: ``{`` means JSON Lines. Every line gives one
    record (a blank line is an "empty text" error), so output line N answers input line N. Ids
    default to the line number. Lines are split on ``\n`` and decoded strictly as UTF-8 one by
    one (a BOM before the first is dropped); one over :data:`~patentml.textio.MAX_LINE_BYTES` is
    an error record and is never held whole.
    """
    if fmt not in INPUT_FORMATS:
        raise ConfigError(f"input format {fmt!r} must be one of {', '.join(INPUT_FORMATS)}")
    lines = enumerate(iter_lines(stream, MAX_LINE_BYTES), 1)
    first: tuple[int, bytes | OverlongLine] | None = None
    blank = 0  # blank lines before the first that decides the format: counted, not kept
    for lineno, raw in lines:
        head = raw.head if isinstance(raw, OverlongLine) else raw
        if lineno == 1:
            head = head.removeprefix(BOM)
            raw = head if isinstance(raw, bytes) else raw
        if fmt != "auto" or head.strip():
            if fmt == "auto":
                fmt = "jsonl" if head.lstrip().startswith(b"{") else "text"
            first = (lineno, raw)
            break
        blank += 1
    if fmt == "auto":
        fmt = "text"
    for lineno in range(1, blank + 1):
        yield _record(lineno, b"", fmt)
    if first is not None:
        yield _record(*first, fmt)
    for lineno, raw in lines:
        yield _record(lineno, raw, fmt)


def count_lines(path: Path) -> int:
    """Lines of a file (for the progress bar total), counted in binary chunks."""
    n, last = 0, b"\n"
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (0 if last == b"\n" else 1)


# --- output ------------------------------------------------------------------------------------


def csv_value(value: Any) -> Any:
    """Booleans as Postgres spells them (``true``/``false``), so predict's CSV and an export read alike."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


class Writer:
    """Writes prediction objects as JSON lines or CSV rows; counts the errors."""

    def __init__(self, out: TextIO, fmt: str = "jsonl") -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ConfigError(f"output format {fmt!r} must be one of {', '.join(OUTPUT_FORMATS)}")
        self.out, self.fmt = out, fmt
        self.lines = self.errors = 0
        self._csv: Any = None
        if fmt == "csv":
            self._csv = csv.writer(out, lineterminator="\n")
            self._csv.writerow(CSV_COLUMNS)

    @property
    def ranked(self) -> bool:
        """Whether the objects must carry their ``suggestions`` (CSV rows are made of them)."""
        return self.fmt == "csv"

    def write(self, obj: dict[str, Any]) -> None:
        self.lines += 1
        self.errors += "error" in obj
        if self._csv is None:
            self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            return
        rows = obj.get("suggestions") or [{}]
        for s in rows:
            self._csv.writerow([csv_value(v) for v in (obj["id"], s.get("rank"), s.get("subclass"), s.get("score"),
                                                       s.get("selected"), obj.get("warning"), obj.get("error"))])

    def write_all(self, objs: Iterable[dict[str, Any]]) -> "Writer":
        for obj in objs:
            self.write(obj)
        self.out.flush()
        return self


def write_lines(results: Iterable[dict[str, Any]], out: TextIO) -> int:
    """Write JSON lines; returns how many were errors."""
    return Writer(out).write_all(results).errors


def predict_stream(predictor: "Predictor", stream: BinaryIO, out: TextIO, *, fmt: str = "auto",
                   output_format: str = "jsonl", top_k: int = 5, batch_size: int | None = None,
                   chunk: int | None = None, total: int | None = None, progress: bool = False,
                   explain: bool = False) -> dict[str, int]:
    """Read records from the bytes of ``stream``, write JSON lines or CSV to ``out``; a progress bar on stderr
    if asked."""
    writer = Writer(out, output_format)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit=" patents", desc="predict", file=sys.stderr, mininterval=0.5, leave=True)
    try:
        writer.write_all(predictor.predict_records(read_records(stream, fmt), top_k=top_k, batch_size=batch_size,
                                                   chunk=chunk, progress=bar, explain=explain, ranked=writer.ranked))
    finally:
        if bar is not None:
            bar.close()
    return {"lines": writer.lines, "errors": writer.errors}
