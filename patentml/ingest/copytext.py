"""COPY text for the corpus tables, and the content hashes, written once for Python and for SQL.

A record is rendered straight into the rows of ``patents``, ``patent_labels`` and
``patent_sources`` when it is new, or into one ``stage`` row when it must be compared with what is
stored (see ``staging``). The hashes are computed here for new records and in SQL for staged ones;
both spell the same formula, and a test holds them equal.
"""

from __future__ import annotations

import hashlib

from patentml.ingest.records import PatentRecord
from patentml.textio import SURROGATES, lone_surrogate

NULL = r"\N"  # NULL in COPY text format
_SEP = "\x1f"  # between hashed fields: a character no field holds

PATENT_COLUMNS = "patent_id, title, abstract, date, source, content_hash, first_batch_id, last_batch_id"
LABEL_COLUMNS = "patent_id, scheme, subclass, section, position, is_main"
SOURCE_COLUMNS = "patent_id, source, content_hash, batch_id, position"
STAGE_COLUMNS = "ord, patent_id, title, abstract, date, labels_cpc, labels_ipc, position, reason, snippet, whole"


def esc(value: object) -> str:
    """One field in COPY text format (NULL is \\N; NUL cannot be stored in text and is dropped)."""
    if value is None:
        return NULL
    s = str(value)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s or "\x00" in s:
        s = (
            s.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\x00", "")
        )
    return s


def array(labels: list[str] | None) -> str:
    # Subclass codes are [A-Z0-9]{4}: safe inside an array literal without quoting.
    return "{" + ",".join(labels) + "}" if labels else NULL


# --- the hashes: Python for new records, SQL for staged ones; the same formula ----------------------

#: sha256 of what a source says about a patent; the same hash as last time means nothing to do.
SOURCE_HASH_SQL = """encode(sha256(convert_to(
    coalesce({p}title, '') || chr(31) || {p}abstract || chr(31) || coalesce(to_char({p}date, 'YYYY-MM-DD'), '')
    || chr(31) || coalesce(array_to_string({p}labels_cpc, ','), '') || chr(31)
    || coalesce(array_to_string({p}labels_ipc, ','), ''), 'UTF8')), 'hex')"""
#: sha256 of a patent's stored text (``patents.content_hash``), from title, abstract and date SQL expressions.
TEXT_HASH_SQL = """encode(sha256(convert_to(coalesce({title}, '') || chr(31) || {abstract} || chr(31)
    || coalesce(to_char({date}, 'YYYY-MM-DD'), ''), 'UTF8')), 'hex')"""


def _hashes(title: str | None, abstract: str, date: str, labels: dict[str, list[str]]) -> tuple[str, str]:
    """(text hash, source hash) of a record's fields as stored (NUL dropped), in one pass over the text."""
    text = f"{'' if title is None else title}\x1f{abstract}\x1f{date}"
    if "\x00" in text:
        text = text.replace("\x00", "")
    h = hashlib.sha256(text.encode("utf-8"))
    text_hash = h.hexdigest()
    cpc, ipc = labels.get("CPC"), labels.get("IPC")
    h.update(f"\x1f{','.join(cpc) if cpc else ''}\x1f{','.join(ipc) if ipc else ''}".encode("ascii"))
    return text_hash, h.hexdigest()


def hashes(record: PatentRecord) -> tuple[str, str]:
    """Python twins of ``TEXT_HASH_SQL`` and ``SOURCE_HASH_SQL`` for one record."""
    date = record.date.isoformat() if record.date is not None else ""
    return _hashes(record.title, record.abstract, date, record.labels)


# --- rows ---------------------------------------------------------------------------------------


def new_rows(record: PatentRecord, source_key: str, batch: str) -> tuple[bytes, bytes, bytes]:
    """The ``patents``, ``patent_labels`` and ``patent_sources`` rows of a new record, as COPY text.

    ``source_key`` comes escaped (it is the same for a whole batch). Raises ``UnicodeEncodeError``
    when a field holds a lone surrogate (it cannot be stored).
    """
    pid, labels = record.patent_id, record.labels
    date = record.date.isoformat() if record.date is not None else ""
    text_hash, source_hash = _hashes(record.title, record.abstract, date, labels)
    patent = (
        f"{pid}\t{esc(record.title)}\t{esc(record.abstract)}\t{date or NULL}\t{source_key}\t{text_hash}\t"
        f"{batch}\t{batch}\n"
    ).encode("utf-8")
    rows = []
    for scheme, subclasses in labels.items():
        head = f"{pid}\t{scheme}\t"
        for i, subclass in enumerate(subclasses):
            rows.append(f"{head}{subclass}\t{subclass[0]}\t{i}\t{'t' if i == 0 else 'f'}\n")
    source = f"{pid}\t{source_key}\t{source_hash}\t{batch}\t{esc(record.position)}\n".encode("utf-8")
    return patent, "".join(rows).encode("ascii"), source


def stage_row(ordinal: int, record: PatentRecord) -> bytes:
    """A record as a ``stage`` row, to be compared with what is stored."""
    date = record.date.isoformat() if record.date is not None else NULL
    return (
        f"{ordinal}\t{esc(record.patent_id)}\t{esc(record.title)}\t{esc(record.abstract)}\t{date}\t"
        f"{array(record.labels.get('CPC'))}\t{array(record.labels.get('IPC'))}\t{esc(record.position)}\t"
        f"{NULL}\t{NULL}\t{NULL}\n"
    ).encode("utf-8")


def reject_row(
    ordinal: int, position: str, reason: str, snippet: str | None, patent_id: str | None, whole: bool
) -> bytes:
    """A ``stage`` row for rejected input (``whole``) or a note about a stored record; surrogates shown as U+FFFD."""
    fields = [patent_id, position, reason, snippet]
    line = "{}\t{}\t\\N\t\\N\t\\N\t\\N\t\\N\t{}\t{}\t{}\t{}\n"
    try:
        return line.format(ordinal, *map(esc, fields), "t" if whole else "f").encode("utf-8")
    except UnicodeEncodeError:
        clean = [None if f is None else SURROGATES.sub("\ufffd", f) for f in fields]
        return line.format(ordinal, *map(esc, clean), "t" if whole else "f").encode("utf-8")


def unicode_problem(record: PatentRecord) -> str:
    """Why a record's text cannot be stored: a lone surrogate (JSON ``"\\ud800"`` decodes to one)."""
    for name in ("abstract", "title", "patent_id", "position"):
        value = getattr(record, name)
        problem = lone_surrogate(value) if isinstance(value, str) else None
        if problem is not None:
            return f"{name} is not valid Unicode: {problem}"
    return "text is not valid Unicode"  # pragma: no cover - encode() failed, so a field has one
