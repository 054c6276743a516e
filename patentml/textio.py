"""Untrusted text in bounded memory: lines read with a length cap, messages clipped to a size, and where
text stops being UTF-8 or Unicode, said once for every reader.

Ingest reads JSON Lines and XML with :func:`iter_lines`; ``patentml predict`` reads its input the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

#: Longest line held in memory by default; a JSON Lines record is a few KB.
MAX_LINE_BYTES = 4 << 20
#: Bytes read at a time while skipping the rest of an overlong line.
_SKIP_BYTES = 1 << 20
#: UTF-16 surrogates: a Python string holds one alone after JSON ``"\\ud800"`` or ``surrogateescape``; UTF-8 cannot.
SURROGATES = re.compile("[\ud800-\udfff]")
#: The byte order mark some editors put before a UTF-8 file's first line.
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class OverlongLine:
    """A line longer than the cap: it was skipped to its end, never held whole."""

    length: int  # bytes before the newline
    head: bytes  # its first bytes, to show where it was

    def describe(self, limit: int) -> str:
        return f"line of {self.length:,} bytes is longer than the {limit:,}-byte limit; it was skipped"


def iter_lines(stream: BinaryIO, max_bytes: int = MAX_LINE_BYTES, head_bytes: int = 300) -> Iterator[bytes | OverlongLine]:
    """Each line of ``stream`` with its newline, or an :class:`OverlongLine` for one over ``max_bytes``.

    A newline-free gigabyte costs ``max_bytes`` of memory, not a gigabyte: the stream is read with
    ``readline(limit)`` and the rest of a long line is read and dropped in chunks.
    """
    readline = stream.readline
    while True:
        line = readline(max_bytes + 1)
        if not line:
            return
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line
            continue
        head, length = line[:head_bytes], len(line)
        while True:
            rest = readline(_SKIP_BYTES)
            if not rest:
                break
            length += len(rest)
            if rest.endswith(b"\n"):
                length -= 1
                break
        yield OverlongLine(length, head)


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, saying how long it was; short text is returned as is."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (cut: {len(text):,} characters)"


def undecodable(raw: bytes, exc: UnicodeDecodeError) -> str:
    """Where ``raw`` stops being UTF-8, for a message: ``byte 0xFF at byte 7`` (1-based)."""
    return f"byte 0x{raw[exc.start]:02X} at byte {exc.start + 1}"


def lone_surrogate(text: str) -> str | None:
    """Where ``text`` stops being Unicode (it then cannot be written as UTF-8), for a message; None if it is."""
    match = SURROGATES.search(text)
    if match is None:
        return None
    code = ord(match.group())
    return f"lone surrogate U+{code:04X} at character {match.start() + 1} (an escaped \\u{code:04x} without its pair)"
