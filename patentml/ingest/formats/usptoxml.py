"""USPTO full-text XML: weekly ``ipgYYMMDD.xml`` grants and ``ipaYYMMDD.xml`` applications, many documents each."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException, EntitiesForbidden

from patentml.ingest.formats._common import collapse, parse_date, snippet, split_labels
from patentml.ingest.ids import canonical_patent_id
from patentml.ingest.records import Item, PatentRecord, RejectedRecord, SkippedRecord, show_dropped
from patentml.textio import OverlongLine, iter_lines

#: Root elements of documents we index (grants, application publications).
PATENT_ROOTS = ("us-patent-grant", "us-patent-application")
#: Root elements of documents that are valid but not patents: counted as skipped.
NON_PATENT_ROOTS = {"sequence-cwu": "sequence listing (sequence-cwu), not a patent"}

#: A document larger than this is not held in memory; it is rejected (real grants are a few MB).
#: Lines are read with the same cap, so a file without newlines cannot become one huge line either.
MAX_DOCUMENT_BYTES = 64 << 20

# The first start tag of a document names its root; "<?xml" and "<!DOCTYPE" never match.
_START_TAG = re.compile(rb"<([A-Za-z_][\w.\-]*)")
# Block elements inside an abstract: their text is separated by a space when joined.
_BLOCKS = {"p", "heading", "li", "ul", "ol", "br", "table", "row", "entry", "maths", "chemistry", "tables"}


@dataclass
class _Document:
    """One document cut out of the concatenated file; ``chunks`` stay empty once we know we will not parse it."""

    number: int
    line: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    root: str | None = None
    too_big: bool = False

    @property
    def position(self) -> str:
        return f"document {self.number} (line {self.line})"

    @property
    def keep(self) -> bool:
        return not self.too_big and self.root not in NON_PATENT_ROOTS

    def add(self, line: bytes | OverlongLine) -> None:
        if isinstance(line, OverlongLine):  # longer than a whole document may be
            self.size += line.length
            self.too_big = True
            self.chunks.clear()
            return
        if self.root is None:
            match = _START_TAG.search(line)
            if match:
                self.root = match.group(1).decode("ascii", "replace")
        self.size += len(line)
        if self.size > MAX_DOCUMENT_BYTES:
            self.too_big = True
        if self.keep:
            self.chunks.append(line)
        else:
            self.chunks.clear()  # a sequence listing can be huge: do not hold what we will skip


def split_documents(stream: BinaryIO) -> Iterator[_Document]:
    """The documents of a concatenated XML file; a new one starts at each line beginning with ``<?xml``."""
    doc: _Document | None = None
    for number, line in enumerate(iter_lines(stream, MAX_DOCUMENT_BYTES), 1):
        if isinstance(line, OverlongLine):
            if doc is None:
                doc = _Document(number=1, line=number)
            doc.add(line)
            continue
        if doc is None or line.startswith(b"<?xml"):
            if doc is None and not line.strip():
                continue  # blank lines before the first document
            if doc is not None:
                yield doc
            doc = _Document(number=doc.number + 1 if doc else 1, line=number)
        doc.add(line)
    if doc is not None:
        yield doc


def parse_uspto_xml(stream: BinaryIO, source: str) -> Iterator[Item]:
    """One item per document, position ``document N (line L)`` with L the line of its ``<?xml``."""
    for doc in split_documents(stream):
        if doc.root in NON_PATENT_ROOTS:
            yield SkippedRecord(source, doc.position, NON_PATENT_ROOTS[doc.root])
        elif doc.too_big:
            yield RejectedRecord(
                source, doc.position, f"document larger than {MAX_DOCUMENT_BYTES >> 20} MiB; it was not read"
            )
        else:
            yield parse_document(b"".join(doc.chunks), source, doc.position, doc.line)


def parse_document(data: bytes, source: str, position: str, first_line: int = 1) -> Item:
    """One XML document as a record; entities are refused and the external DTD is never read."""
    try:
        # forbid_dtd=False: every USPTO document has a DOCTYPE; expat does not load its external
        # subset, and any entity declaration (bombs, external entities) raises EntitiesForbidden.
        root = SafeET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except EntitiesForbidden as exc:
        return RejectedRecord(
            source, position, f"entity declaration refused ({exc.name!r}): entities are never expanded"
        )
    except DefusedXmlException as exc:
        return RejectedRecord(source, position, f"refused unsafe XML: {exc}")
    except ET.ParseError as exc:
        line, column = exc.position
        lines = data.split(b"\n")
        offending = lines[line - 1].decode("utf-8", "replace").strip() if 0 < line <= len(lines) else None
        message = str(exc).rsplit(": line ", 1)[0]
        return RejectedRecord(
            source,
            position,
            f"XML does not parse: {message} at file line {first_line + line - 1}, column {column + 1}",
            snippet(offending),
        )
    if root.tag not in PATENT_ROOTS:
        return RejectedRecord(
            source, position, f"unexpected root element <{root.tag}> (expected {' or '.join(PATENT_ROOTS)})"
        )
    return _record(root, source, position)


def _text(element: ET.Element | None) -> str:
    """All text inside ``element``, whitespace collapsed, with block elements kept apart by a space.

    An explicit stack, not recursion: a document nested thousands of levels deep is just text.
    """
    if element is None:
        return ""
    parts: list[str] = [element.text or ""]
    # Each entry: a child to open, or (after its subtree) the text that follows it.
    stack: list[ET.Element | str] = list(reversed(element))
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            parts.append(node)
            continue
        block = " " if node.tag in _BLOCKS else ""
        parts.append(block + (node.text or ""))
        stack.append(block + (node.tail or ""))
        stack.extend(reversed(node))
    return collapse("".join(parts))


def _field(element: ET.Element | None, path: str) -> str:
    found = element.find(path) if element is not None else None
    return (found.text or "").strip() if found is not None else ""


def _symbols(entries: list[ET.Element]) -> list[str]:
    # A subclass is the section, class and subclass elements of one classification entry.
    return [(_field(e, "section") + _field(e, "class") + _field(e, "subclass")) or "(empty)" for e in entries]


def _record(root: ET.Element, source: str, position: str) -> Item:
    biblio = root.find("us-bibliographic-data-grant")
    if biblio is None:
        biblio = root.find("us-bibliographic-data-application")
    doc_id = biblio.find("publication-reference/document-id") if biblio is not None else None
    number = _field(doc_id, "doc-number")
    if not number:
        return RejectedRecord(source, position, "no doc-number in publication-reference")
    try:
        patent_id = canonical_patent_id((_field(doc_id, "country") or "US") + number)
    except ValueError as exc:
        return RejectedRecord(source, position, str(exc))
    title = _text(biblio.find("invention-title")) or None  # type: ignore[union-attr]
    kind = _field(doc_id, "kind")
    date = None
    raw_date = _field(doc_id, "date")
    if raw_date:
        try:
            date = parse_date(raw_date)
        except ValueError:
            date = None  # the office's own record: a bad date costs the date, not the patent

    abstract = _text(root.find("abstract"))
    if not abstract:
        design = kind.startswith("S") or patent_id.startswith("USD")
        reason = "no abstract (design grant)" if design else "no abstract"
        return RejectedRecord(source, position, reason, snippet(title), patent_id)

    # Only the patent's own classification: us-field-of-classification-search lists what the
    # examiner searched, not what the patent is. Combination sets (further-cpc/combination-set/
    # combination-rank/classification-cpc) are CPC allocations too.
    cpc_entries = biblio.findall("classifications-cpc/main-cpc//classification-cpc")  # type: ignore[union-attr]
    cpc_entries += biblio.findall("classifications-cpc/further-cpc//classification-cpc")  # type: ignore[union-attr]
    ipc_entries = biblio.findall("classifications-ipcr/classification-ipcr")  # type: ignore[union-attr]
    cpc, cpc_dropped = split_labels(_symbols(cpc_entries))
    ipc, ipc_dropped = split_labels(_symbols(ipc_entries))
    labels = {scheme: found for scheme, found in (("CPC", cpc), ("IPC", ipc)) if found}
    dropped = cpc_dropped + ipc_dropped
    if not labels and dropped:
        # Classified, but with nothing usable; a document with no classification at all (an
        # application before classification) is a new filing and is stored without labels.
        reason = f"no valid CPC or IPC classification (got [{show_dropped(dropped)}])"
        return RejectedRecord(source, position, reason, snippet(title), patent_id)
    return PatentRecord(
        patent_id=patent_id,
        abstract=abstract,
        labels=labels,
        source=source,
        position=position,
        title=title,
        date=date,
        dropped=dropped,
    )
