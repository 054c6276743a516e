"""Canonical patent ids and subclass labels, worked out by hand."""

from __future__ import annotations

import pytest

from patentml.ingest.ids import canonical_patent_id, is_subclass, normalise_label, section_of


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("US08926509", "US8926509"),
        ("08926509", "US8926509"),
        ("8926509", "US8926509"),
        ("US 8,926,509", "US8926509"),
        ("us8926509", "US8926509"),
        (" US-8926509 ", "US8926509"),
        ("US8926509B2", "US8926509"),  # a trailing publication kind code is not part of the number
        ("USPP016307", "USPP16307"),
        ("PP016307", "USPP16307"),
        ("D0512345", "USD512345"),
        ("USD0712345", "USD712345"),
        ("USD0712345S1", "USD712345"),
        ("RE042345", "USRE42345"),  # RE is a kind prefix, not a country
        ("USRE042345", "USRE42345"),
        ("H002345", "USH2345"),
        ("T0998001", "UST998001"),
        ("20180000001", "US20180000001"),
        ("EP1234567A1", "EP1234567"),
    ],
)
def test_canonical_patent_id(raw: str, expected: str) -> None:
    assert canonical_patent_id(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty patent id"),
        ("   ", "empty patent id"),
        ("XYZ", "unusable patent id 'XYZ'"),
        ("US", "unusable patent id 'US'"),
        ("US0000000", "the number is zero"),
        ("X-12", "unusable patent id 'X-12'"),
    ],
)
def test_canonical_patent_id_rejects(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        canonical_patent_id(raw)


def test_canonical_patent_id_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="expected a string"):
        canonical_patent_id(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("H04L", "H04L"),
        ("h04l", "H04L"),
        ("H04L 29/06", "H04L"),
        ("H04L0029060000", "H04L"),
        ("H04L29/06", "H04L"),
        (" B60W  20/00 ", "B60W"),
        ("Y02E 10/50", "Y02E"),
        ("H04L 29/06 (2006.01)", "H04L"),
        ("XYZ", None),
        ("12AB", None),
        ("", None),
        ("   ", None),
        ("I04L", None),  # no section I
        ("H4L", None),
        ("H04LX", None),  # a letter after the subclass is not a group
        ("H04", None),
        (None, None),
        (1234, None),
    ],
)
def test_normalise_label(raw: object, expected: str | None) -> None:
    assert normalise_label(raw) == expected  # type: ignore[arg-type]


def test_section_of() -> None:
    assert section_of("H04L") == "H"
    assert section_of("Y02E") == "Y"
    assert is_subclass("A01B") and not is_subclass("A01B 1/00")
    with pytest.raises(ValueError, match="not a subclass code: 'H04L 29/06'"):
        section_of("H04L 29/06")
