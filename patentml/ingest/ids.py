"""Canonical patent ids and subclass labels, the same whatever format a patent came from."""

from __future__ import annotations

import re
from functools import lru_cache

from patentml.textio import clip

#: Kind prefixes that are part of a US patent number (design, plant, reissue, SIR, defensive publication).
KIND_PREFIXES = ("D", "PP", "RE", "H", "T")

#: Country code used when an id has none (USPTO-2M, PatentsView and most JSONL ids are US).
DEFAULT_COUNTRY = "US"

_KIND = "|".join(sorted(KIND_PREFIXES, key=len, reverse=True))  # longest alternative first
# Separators people and sources put inside numbers: "US 8,926,509", "US-8926509", "D 512.345".
_SEPARATORS = re.compile(r"[\s,.\-/]+")
# A trailing publication kind code ("B2", "A1", "S", "E", "P2") is not part of the number.
_KIND_CODE = r"(?:[A-Z][0-9]?)?"
# Without a country code a leading "RE"/"PP" is a kind prefix, never a country: try this first.
_BARE = re.compile(rf"^(?P<kind>{_KIND})?(?P<number>[0-9]+){_KIND_CODE}$")
_WITH_COUNTRY = re.compile(rf"^(?P<country>[A-Z]{{2}})(?P<kind>{_KIND})?(?P<number>[0-9]+){_KIND_CODE}$")

#: Longest id text looked at, and most digits in a number: real ids are far shorter (an application
#: publication number has 11 digits), so a longer one is an error, not something to store and index.
MAX_ID_CHARS = 40
MAX_ID_DIGITS = 15
#: Longest label value looked at (``H04L 29/06 (2006.01)`` is 20 characters).
MAX_LABEL_CHARS = 64
# The common case, already canonical, tried before the general rules. Only "US": without a country a
# leading "PP" or "RE" is a kind prefix, which the general rules handle.
_CANONICAL = re.compile(rf"{DEFAULT_COUNTRY}(?:{_KIND})?[1-9][0-9]{{0,{MAX_ID_DIGITS - 1}}}")

_SUBCLASS = re.compile(r"^[A-HY][0-9]{2}[A-Z]$")
# After the subclass only a group part may follow: "29/06", "0029060000", "20/00 (2006.01)".
_LABEL = re.compile(r"^(?P<subclass>[A-HY][0-9]{2}[A-Z])(?P<rest>[0-9\s/.:]*(?:\([^)]*\))?)$")


def canonical_patent_id(raw: str) -> str:
    """Country code, kind prefix and number without leading zeros: ``US 08,926,509`` -> ``US8926509``.

    Raises ``ValueError`` saying what was expected when ``raw`` is not a patent number.
    """
    if not isinstance(raw, str):
        raise ValueError(f"unusable patent id {clip(repr(raw), MAX_ID_CHARS)}: expected a string such as 'US8926509'")
    if _CANONICAL.fullmatch(raw):
        return raw
    if len(raw) > MAX_ID_CHARS:
        raise ValueError(
            f"unusable patent id {clip(repr(raw), MAX_ID_CHARS)}: {len(raw):,} characters, "
            f"longer than any patent number (at most {MAX_ID_CHARS})"
        )
    text = _SEPARATORS.sub("", raw).upper()
    if not text:
        raise ValueError("empty patent id")
    match = _BARE.match(text) or _WITH_COUNTRY.match(text)
    if match is None:
        raise ValueError(
            f"unusable patent id {raw!r}: expected an optional country code, an optional kind prefix "
            f"({', '.join(KIND_PREFIXES)}) and digits, e.g. 'US8926509', 'USD512345', 'RE42345'"
        )
    number = match["number"].lstrip("0")
    if not number:
        raise ValueError(f"unusable patent id {raw!r}: the number is zero")
    if len(number) > MAX_ID_DIGITS:
        raise ValueError(
            f"unusable patent id {raw!r}: {len(number)} digits, more than any patent number (at most {MAX_ID_DIGITS})"
        )
    country = match.groupdict().get("country") or DEFAULT_COUNTRY
    return f"{country}{match['kind'] or ''}{number}"


def normalise_label(raw: str) -> str | None:
    """The subclass (``H04L``) of ``h04l``, ``H04L 29/06``, ``H04L0029060000``...; None if it is not a label."""
    if not isinstance(raw, str) or len(raw) > MAX_LABEL_CHARS:
        return None
    return _normalise_label(raw)


@lru_cache(maxsize=8192)
def _normalise_label(raw: str) -> str | None:
    # A corpus repeats a few thousand label spellings millions of times: worth a cache.
    match = _LABEL.match(raw.strip().upper())
    return match["subclass"] if match else None


def is_subclass(code: str) -> bool:
    """Whether ``code`` is exactly a subclass code (section letter, two digits, a letter)."""
    return isinstance(code, str) and _SUBCLASS.match(code) is not None


def section_of(subclass: str) -> str:
    """The section letter (``H``) of a subclass code (``H04L``); ``ValueError`` if it is not a subclass."""
    if not is_subclass(subclass):
        raise ValueError(f"not a subclass code: {subclass!r} (expected e.g. 'H04L')")
    return subclass[0]
