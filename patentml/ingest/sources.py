"""Find source files, open them (plain, .gz or .zip, always streamed) and tell their format."""

from __future__ import annotations

import glob
import gzip
import logging
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import BinaryIO

from patentml.exceptions import IngestError, SourceNotFoundError, UnknownFormatError
from patentml.textio import BOM

log = logging.getLogger(__name__)

#: Formats a source can be in; ``--format`` takes one of these.
FORMATS = ("jsonl", "uspto2m", "uspto-xml", "patentsview")

#: File name endings of data files picked up when a folder is given (compressed variants too).
DATA_EXTENSIONS = (".json", ".jsonl", ".ndjson", ".xml", ".tsv")
COMPRESSED_EXTENSIONS = (".gz", ".zip")

#: Bytes read from the start of a stream to detect its format.
HEAD_BYTES = 8192

#: The PatentsView tables we join, by role; other ``g_*.tsv`` tables are ignored.
PATENTSVIEW_TABLES = {
    "patent": "g_patent.tsv",
    "abstract": "g_patent_abstract.tsv",
    "cpc": "g_cpc_current.tsv",
}

# Name patterns are tried before content: they are what the publishers call their files.
_NAME_PATTERNS = (
    ("*_uspto.json", "uspto2m"),
    ("ipg*.xml", "uspto-xml"),
    ("ipa*.xml", "uspto-xml"),
    ("g_*.tsv", "patentsview"),
    ("*.jsonl", "jsonl"),
    ("*.ndjson", "jsonl"),
)
_XML_START = re.compile(rb"<(\?xml|!DOCTYPE\s+(us-patent-|sequence-cwu)|us-patent-|sequence-cwu)")
_GLOB_MAGIC = re.compile(r"[*?[]")
# What ends a partially read stream: a truncated or corrupt compressed file.
_READ_ERRORS: tuple[type[BaseException], ...] = (EOFError, gzip.BadGzipFile, zipfile.BadZipFile)


@dataclass(frozen=True)
class StreamRef:
    """One readable stream: a plain or gzip file, or one member of a zip archive."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        """How the stream is named in records and messages; a zip member reads as ``archive.zip/member``."""
        return str(self.path) if self.member is None else f"{self.path}/{self.member}"

    @property
    def base_name(self) -> str:
        """The file name without folders and without ``.gz``/``.zip``: what name-based detection looks at."""
        return strip_compression(Path(self.name).name)

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The decompressed bytes, streamed; nothing is read ahead beyond a buffer."""
        if self.member is not None:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as member:
                yield member  # type: ignore[misc]
        elif self.path.name.lower().endswith(".gz"):
            with gzip.open(self.path, "rb") as stream:
                yield stream  # type: ignore[misc]
        else:
            with open(self.path, "rb", buffering=1 << 20) as stream:
                yield stream


@dataclass(frozen=True)
class SourceUnit:
    """What one batch parses: a single stream, or the three joined PatentsView tables of one folder.

    ``name`` is what the loader records as the batch source. For ``patentsview`` the streams are
    ``(g_patent, g_patent_abstract, g_cpc_current)`` in that order and ``name`` is their folder.
    ``error`` says why a source cannot be read at all (unreadable, format unknown): such a unit
    has no streams and becomes a ``failed`` batch while the other sources go on.
    """

    format: str
    name: str
    streams: tuple[StreamRef, ...]
    error: str | None = None


def strip_compression(name: str) -> str:
    """``g_patent.tsv.zip`` -> ``g_patent.tsv``; ``ipg180102.xml.gz`` -> ``ipg180102.xml``."""
    lowered = name.lower()
    while lowered.endswith(COMPRESSED_EXTENSIONS):
        cut = 3 if lowered.endswith(".gz") else 4
        name, lowered = name[:-cut], lowered[:-cut]
    return name


def is_data_name(name: str) -> bool:
    """Whether a file name looks like a data file we can read (possibly compressed)."""
    lowered = name.lower()
    if lowered.endswith(".zip"):
        return True
    return strip_compression(lowered).endswith(DATA_EXTENSIONS)


def _folder_files(folder: Path) -> list[Path]:
    # Hidden files and folders (.git, .DS_Store) are never data; sorting makes batches reproducible.
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root, f) for f in files if not f.startswith(".") and is_data_name(f))
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def expand_sources(specs: Sequence[str | Path]) -> list[Path]:
    """Files named by paths, folders (searched recursively for data files) and globs, in order, without repeats.

    Raises ``SourceNotFoundError`` naming the first spec that matches no file.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        text = os.path.expanduser(str(spec))
        path = Path(text)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = _folder_files(path)
            if not found:
                raise SourceNotFoundError(
                    f"source folder {str(spec)!r} holds no data file "
                    f"(looked for {', '.join(DATA_EXTENSIONS)}, also .gz and .zip)"
                )
        elif _GLOB_MAGIC.search(text):
            found = []
            for match in sorted(glob.glob(text, recursive=True)):
                match_path = Path(match)
                found.extend(_folder_files(match_path) if match_path.is_dir() else [match_path])
            if not found:
                raise SourceNotFoundError(f"source pattern {str(spec)!r} matched no file")
        else:
            raise SourceNotFoundError(f"source {str(spec)!r} not found: no such file or folder")
        for item in found:
            key = item.resolve()
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


def list_streams(path: str | Path) -> list[StreamRef]:
    """The streams in a file: itself for plain and gzip files, each data member for a zip archive."""
    path = Path(path)
    if not path.name.lower().endswith(".zip"):
        return [StreamRef(path)]
    try:
        with zipfile.ZipFile(path) as archive:
            members = [
                info.filename
                for info in archive.infolist()
                if not info.is_dir() and not info.filename.startswith("__MACOSX/")
            ]
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(f"{path}: not a readable zip archive (truncated or corrupt?): {exc}") from exc
    # A README beside the data must not stop the batch; an archive of odd names is read whole.
    data = [m for m in members if is_data_name(Path(m).name)]
    return [StreamRef(path, m) for m in (data or members)]


def iter_streams(path: str | Path) -> Iterator[tuple[str, BinaryIO]]:
    """``(name, binary stream)`` for each stream in ``path``, opened one at a time and closed after use."""
    for ref in list_streams(path):
        with ref.open() as stream:
            yield ref.name, stream


@contextmanager
def open_binary(path: str | Path) -> Iterator[BinaryIO]:
    """The decompressed bytes of a plain, gzip, or single-member zip file, streamed."""
    refs = list_streams(path)
    if len(refs) != 1:
        raise IngestError(
            f"{path}: a zip archive with {len(refs)} data members has no single stream; read it "
            "with iter_streams()"
        )
    with refs[0].open() as stream:
        yield stream


def read_head(ref: StreamRef, size: int = HEAD_BYTES) -> bytes:
    """Up to ``size`` bytes from the start of a stream; a truncated stream gives what it has."""
    chunks: list[bytes] = []
    got = 0
    try:
        with ref.open() as stream:
            while got < size:
                chunk = stream.read1(size - got)  # read1: a later truncation must not lose what was read
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except _READ_ERRORS as exc:
        if not chunks:
            raise IngestError(f"{ref.name}: cannot be read: {exc}") from exc
    except OSError as exc:
        raise IngestError(f"{ref.name}: cannot be read: {exc}") from exc
    return b"".join(chunks)


def _tsv_header(head_bytes: bytes) -> list[str]:
    first = head_bytes.split(b"\n", 1)[0].decode("utf-8", "replace").strip("\r\ufeff")
    return [column.strip().strip('"') for column in first.split("\t")]


def detect_format(path: str | Path | StreamRef, head_bytes: bytes) -> str:
    """The format of a stream from its name, else its first bytes; ``UnknownFormatError`` naming it otherwise."""
    name = path.name if isinstance(path, StreamRef) else str(path)
    base = path.base_name if isinstance(path, StreamRef) else strip_compression(Path(name).name)
    for pattern, fmt in _NAME_PATTERNS:
        if fnmatch(base.lower(), pattern):
            return fmt
    text = head_bytes.removeprefix(BOM).lstrip()
    if text.startswith(b"["):
        return "uspto2m"
    if text.startswith(b"{"):
        return "jsonl"
    if _XML_START.match(text):
        return "uspto-xml"
    columns = _tsv_header(text)
    if len(columns) > 1 and "patent_id" in columns:
        return "patentsview"
    what = "it is empty" if not text else f"it starts with {text[:40]!r}"
    raise UnknownFormatError(
        f"cannot tell the format of {name}: {what}. Expected a USPTO-2M JSON array (<YEAR>_USPTO.json), "
        "JSON Lines, USPTO XML (ipgYYMMDD.xml) or PatentsView TSV (g_patent.tsv); "
        f"name one with --format ({', '.join(FORMATS)})"
    )


def patentsview_role(ref: StreamRef, head_bytes: bytes) -> str | None:
    """Which joined table a PatentsView stream is (``patent``, ``abstract``, ``cpc``); None for other tables."""
    base = ref.base_name.lower()
    for role, table in PATENTSVIEW_TABLES.items():
        if base == table:
            return role
    if base.startswith("g_"):
        return None  # another PatentsView table (inventors, citations...): not needed here
    # A renamed file: tell the table by its columns.
    columns = set(_tsv_header(head_bytes.removeprefix(BOM)))
    if "patent_abstract" in columns:
        return "abstract"
    if {"cpc_sequence", "cpc_subclass"} & columns:
        return "cpc"
    if {"patent_title", "patent_date"} & columns:
        return "patent"
    return None


def plan_sources(
    specs: Sequence[str | Path], forced_format: str | None = None, keep_going: bool = False
) -> list[SourceUnit]:
    """Expand ``specs`` and detect each stream's format (or use ``forced_format``): the batches to run, in order.

    PatentsView tables are grouped by folder into one unit. A source that cannot be read or
    recognised (or a PatentsView folder lacking a table) raises ``IngestError`` naming it, or with
    ``keep_going`` becomes a unit whose ``error`` says so. A spec matching no file always raises.
    """
    if forced_format is not None and forced_format not in FORMATS:
        raise IngestError(f"unknown format {forced_format!r}; choose one of {', '.join(FORMATS)}")
    units: list[SourceUnit | Path] = []  # a Path stands for the PatentsView group of that folder
    groups: dict[Path, dict[str, StreamRef]] = {}
    group_errors: dict[Path, str] = {}

    def failed(exc: IngestError, name: str) -> None:
        if not keep_going:
            raise exc
        units.append(SourceUnit(forced_format or "unknown", name, (), error=str(exc)))

    for path in expand_sources(specs):
        try:
            refs = list_streams(path)
        except IngestError as exc:
            failed(exc, str(path))
            continue
        for ref in refs:
            try:
                head = read_head(ref)
                fmt = forced_format or detect_format(ref, head)
            except IngestError as exc:
                failed(exc, ref.name)
                continue
            if fmt != "patentsview":
                units.append(SourceUnit(fmt, ref.name, (ref,)))
                continue
            role = patentsview_role(ref, head)
            if role is None:
                log.warning("ignoring %s: only %s are read from PatentsView", ref.name,
                            ", ".join(PATENTSVIEW_TABLES.values()))
                continue
            folder = ref.path.parent
            group = groups.setdefault(folder, {})
            if not group and folder not in group_errors:
                units.append(folder)
            if role in group and group[role] != ref:
                group_errors.setdefault(
                    folder,
                    f"PatentsView folder {folder} has two {PATENTSVIEW_TABLES[role]} tables: "
                    f"{group[role].name} and {ref.name}; keep one",
                )
            group[role] = ref
    plan: list[SourceUnit] = []
    for unit in units:
        if isinstance(unit, SourceUnit):
            plan.append(unit)
            continue
        group = groups[unit]
        missing = [table for role, table in PATENTSVIEW_TABLES.items() if role not in group]
        if missing:
            group_errors.setdefault(
                unit,
                f"PatentsView folder {unit} lacks {', '.join(missing)}: g_patent.tsv, "
                "g_patent_abstract.tsv and g_cpc_current.tsv are joined on patent_id and must be "
                "given together (pass their folder)",
            )
        if unit in group_errors:
            if not keep_going:
                raise IngestError(group_errors[unit])
            plan.append(SourceUnit("patentsview", str(unit), (), error=group_errors[unit]))
            continue
        plan.append(SourceUnit("patentsview", str(unit), tuple(group[role] for role in PATENTSVIEW_TABLES)))
    return plan
