"""Which source files one ingest run reads: by data interval where file names carry a date.

USPTO's weekly full-text files are named by their publication date (``ipg240102.zip`` for grants
published on 2 Jan 2024, ``ipa240104.zip`` for applications). A run reads the dated files whose
date lies in its data interval ``[start, end)``, so each weekly file is read by exactly one
scheduled run and a backfill reads the weeks it covers. Undated sources (JSON Lines, USPTO-2M
year files, PatentsView tables) are read whole by every run: the upsert makes that a no-op.

A source is a local file, folder or glob, or an ``http(s)://`` URL: a file URL is downloaded, a URL
ending in ``/`` is read as a directory listing (like bulkdata.uspto.gov) whose data links are
selected the same way. Downloads are streamed to a temporary name and renamed when complete.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import logging
import os
import re
import shutil
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

log = logging.getLogger(__name__)

_DATED = re.compile(r"^(?:ipg|ipa)(\d{2})(\d{2})(\d{2})(?:[._-]|$)", re.IGNORECASE)
#: File name endings a listing link must have to count as data (compressed variants included).
_DATA_LINK = re.compile(r"\.(?:jsonl|ndjson|json|xml|tsv)(?:\.gz|\.zip)?$|\.zip$|\.gz$", re.IGNORECASE)
_GLOB_MAGIC = re.compile(r"[*?[]")
DOWNLOAD_CHUNK = 1 << 20


class SourceError(ValueError):
    """A source is empty, missing, or cannot be listed or downloaded."""


@dataclass(frozen=True)
class Selection:
    """What a run will read (``selected``) and what it left out (``outside``) and why."""

    selected: list[str]
    outside: list[str]
    undated: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"selected": self.selected, "outside_interval": self.outside, "undated": self.undated}


def file_date(name: str) -> dt.date | None:
    """``ipg240102.zip`` -> 2024-01-02; None for names that carry no publication date."""
    match = _DATED.match(Path(urllib.parse.urlsplit(name).path).name)
    if not match:
        return None
    yy, mm, dd = (int(g) for g in match.groups())
    try:
        return dt.date(2000 + yy, mm, dd)
    except ValueError:
        return None


def in_interval(day: dt.date, start: dt.datetime, end: dt.datetime) -> bool:
    """Whether a file published on ``day`` (00:00 UTC) falls in ``[start, end)``."""
    moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    return start <= moment < end


def split_sources(text: str) -> list[str]:
    """Sources from a Param: separated by commas or new lines."""
    return [part.strip() for part in re.split(r"[,\n]+", text or "") if part.strip()]


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _local_files(spec: str) -> list[str]:
    """Files of a local path, folder (recursively, no hidden entries) or glob; [] if nothing matches."""
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        found: list[str] = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [str(Path(root, f)) for f in sorted(files) if not f.startswith(".")]
        return found
    if _GLOB_MAGIC.search(spec):
        return sorted(p for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
    return []


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def list_url(url: str, timeout: float = 60.0) -> list[str]:
    """Absolute URLs of the data files linked from a directory listing page."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - operator-set URL
        charset = response.headers.get_content_charset() or "utf-8"
        page = response.read(16 << 20).decode(charset, "replace")
    parser = _Links()
    parser.feed(page)
    out: list[str] = []
    for href in parser.links:
        absolute = urllib.parse.urljoin(url, href)
        if absolute.startswith(url) and _DATA_LINK.search(urllib.parse.urlsplit(absolute).path):
            out.append(absolute)
    return list(dict.fromkeys(out))


def select(
    sources: list[str],
    start: dt.datetime | None,
    end: dt.datetime | None,
    by_interval: bool = True,
) -> Selection:
    """Pick what one run reads. Dated files outside ``[start, end)`` are left out when ``by_interval``.

    A local folder or glob without any dated file is passed on as it is (the library expands it and
    groups PatentsView tables by folder); with dated files it is expanded here so they can be chosen.
    """
    if not sources:
        raise SourceError(
            "no ingest source: set the DAG Param 'source' or PATENTML_INGEST_SOURCE "
            "(a folder, a glob, a file or an http(s) URL; several separated by commas)"
        )
    filter_dates = by_interval and start is not None and end is not None
    selected: list[str] = []
    outside: list[str] = []
    undated: list[str] = []
    for source in sources:
        if is_url(source):
            candidates = list_url(source) if source.endswith("/") else [source]
            if not candidates:
                raise SourceError(f"the listing {source} links no data file")
        else:
            candidates = _local_files(source)
            if not candidates:
                raise SourceError(f"source {source!r} not found: no such file, folder or matching file")
            if not any(file_date(c) for c in candidates) and not Path(source).is_file():
                undated.append(source)
                selected.append(source)
                continue
        for candidate in candidates:
            day = file_date(candidate)
            if day is None:
                undated.append(candidate)
                selected.append(candidate)
            elif not filter_dates or in_interval(day, start, end):  # type: ignore[arg-type]
                selected.append(candidate)
            else:
                outside.append(candidate)
    return Selection(list(dict.fromkeys(selected)), outside, undated)


def download(url: str, folder: Path, timeout: float = 300.0) -> Path:
    """Fetch ``url`` into ``folder`` (kept as a cache keyed by URL); an existing complete copy is reused."""
    name = Path(urllib.parse.urlsplit(url).path).name or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = folder / digest / name
    if target.is_file():
        log.info("Reusing the downloaded %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    log.info("Downloading %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out, DOWNLOAD_CHUNK)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise SourceError(f"downloading {url} failed: {exc}") from exc
    os.replace(partial, target)
    return target


def localize(selected: list[str], folder: Path) -> list[str]:
    """Local paths for the selected sources: URLs are downloaded, local ones kept."""
    return [str(download(s, folder)) if is_url(s) else s for s in selected]
