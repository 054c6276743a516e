"""Which source files one ingest run reads, where it may read them from, and how they split into tasks.

USPTO's weekly full-text files are named by their publication date (``ipg240102.zip`` for grants
published on 2 Jan 2024, ``ipa240104.zip`` for applications). A run reads the dated files whose
date lies in its data interval ``[start, end)``, so each weekly file is read by exactly one
scheduled run and a backfill reads the weeks it covers; ``latest=N`` reads the N newest instead.
Undated sources (JSON Lines, USPTO-2M year files, PatentsView tables) are read whole by every run:
the upsert makes that a no-op.

A source is a local file, folder or glob, or an ``http(s)://`` URL: a file URL is downloaded, a URL
ending in ``/`` is read as a directory listing (like bulkdata.uspto.gov) whose data links are
selected the same way (:mod:`patentml_airflow.downloads`).

The Param can be typed by anyone who may trigger the DAG, and what a batch rejects is shown in the
UI, so sources are confined: local paths to ``PATENTML_INGEST_ROOTS`` (after resolving symlinks and
``..``, for every file read, not only the path given) and URLs to ``PATENTML_INGEST_URL_HOSTS``
(redirects included). Anything else fails naming what is allowed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where the public bulk files live: USPTO's bulk-data pages and PatentsView's download bucket.
DEFAULT_URL_HOSTS = ("bulkdata.uspto.gov", "s3.amazonaws.com/data.patentsview.org")
#: Below PATENTML_HOME when PATENTML_INGEST_ROOTS is unset: a drop folder and nothing else.
DEFAULT_ROOT = "incoming"

_DATED = re.compile(r"^(?:ipg|ipa)(\d{2})(\d{2})(\d{2})(?:[._-]|$)", re.IGNORECASE)
_GLOB_MAGIC = re.compile(r"[*?[]")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class SourceError(ValueError):
    """A source is not allowed, empty, missing, or cannot be listed or downloaded."""


def split_sources(text: str) -> list[str]:
    """Sources from a Param or setting: separated by commas or new lines."""
    return [part.strip() for part in re.split(r"[,\n]+", text or "") if part.strip()]


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _static_part(spec: str) -> str:
    """The part of a path before its first glob character: what a glob can only ever match below."""
    magic = _GLOB_MAGIC.search(spec)
    return spec if magic is None else os.path.dirname(spec[: magic.start()]) or "."


def roots_for(specs: list[str]) -> list[str]:
    """The folders (or files) that allow exactly these local sources (what ``make run DATA=...`` names)."""
    return [os.path.realpath(_static_part(os.path.expanduser(s))) for s in specs if not _SCHEME.match(s)]


@dataclass(frozen=True)
class SourcePolicy:
    """What ingest may read: local paths under ``roots`` (resolved), URLs on ``url_hosts``.

    A host entry is ``host``, ``host:port`` or ``host/path-prefix``; without a port it matches the
    scheme's default port only.
    """

    roots: tuple[str, ...]
    url_hosts: tuple[str, ...]

    @classmethod
    def from_env(cls, home: Path) -> "SourcePolicy":
        roots = split_sources(os.environ.get("PATENTML_INGEST_ROOTS", "")) or [str(Path(home) / DEFAULT_ROOT)]
        hosts = split_sources(os.environ.get("PATENTML_INGEST_URL_HOSTS", "")) or list(DEFAULT_URL_HOSTS)
        return cls(tuple(os.path.realpath(os.path.expanduser(r)) for r in roots), tuple(h.lower() for h in hosts))

    def local(self, path: str) -> str:
        """The resolved ``path`` when it lies under a root; ``SourceError`` naming the roots otherwise."""
        real = os.path.realpath(os.path.expanduser(path))
        if any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots):
            return real
        raise SourceError(
            f"source {path!r} is outside the folders ingest may read ({', '.join(self.roots)}); "
            "put the files there or add a folder to PATENTML_INGEST_ROOTS"
        )

    def url(self, url: str) -> str:
        """``url`` when its scheme, host and path are allowed; ``SourceError`` naming the hosts otherwise."""
        parts = urllib.parse.urlsplit(url)
        segments = urllib.parse.unquote(parts.path).split("/")
        problem = None
        if parts.scheme.lower() not in ("http", "https"):
            problem = "only http(s) URLs are read"
        elif parts.username is not None or parts.password is not None:
            problem = "credentials do not belong in a source URL"
        elif "." in segments or ".." in segments:
            problem = "'.' and '..' are not allowed in its path"
        else:
            default = 443 if parts.scheme.lower() == "https" else 80
            try:
                port = parts.port or default
            except ValueError:  # not a number, or out of range
                port = -1
            for allowed in self.url_hosts:
                where, _, prefix = allowed.partition("/")
                host, _, want = where.partition(":")
                if parts.hostname == host and port == (int(want) if want else default) and (
                    not prefix or parts.path.startswith("/" + prefix.strip("/") + "/")
                ):
                    return url
            problem = "its host is not allowed"
        raise SourceError(
            f"URL {url!r} is refused: {problem}. Ingest reads from {', '.join(self.url_hosts)} "
            "(PATENTML_INGEST_URL_HOSTS: host, host:port or host/path-prefix, comma-separated)"
        )


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


def last_interval(cron: str, timezone: str, moment: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The last complete interval of a cron schedule at ``moment``: what Airflow gives a manual run that
    has a logical date (``infer_manual_data_interval``), here for one that has none."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    local = moment.astimezone(ZoneInfo(timezone))
    end = croniter(cron, local + dt.timedelta(microseconds=1)).get_prev(dt.datetime)  # `moment` itself if on schedule
    start = croniter(cron, end).get_prev(dt.datetime)
    return start.astimezone(dt.timezone.utc), end.astimezone(dt.timezone.utc)


def _local_files(spec: str, policy: SourcePolicy) -> list[str]:
    """The resolved data files of a local path, folder or glob, each confined to the roots."""
    from patentml.exceptions import SourceNotFoundError
    from patentml.ingest.sources import expand_sources

    policy.local(_static_part(os.path.expanduser(spec)))  # before looking: say nothing about other folders
    try:
        found = expand_sources([spec])
    except SourceNotFoundError as exc:
        raise SourceError(str(exc)) from None
    return list(dict.fromkeys(policy.local(str(path)) for path in found))  # a symlink out of a root stops here


def select(
    sources: list[str],
    start: dt.datetime | None,
    end: dt.datetime | None,
    policy: SourcePolicy,
    by_interval: bool = True,
    latest: int | None = None,
) -> Selection:
    """Pick what one run reads: of each source's dated files, those in ``[start, end)`` when ``by_interval``
    (all of them without an interval), or its ``latest`` newest; undated files always."""
    if not sources:
        raise SourceError(
            "no ingest source: set the DAG Param 'source' or PATENTML_INGEST_SOURCE "
            "(a folder, a glob, a file or an http(s) URL; several separated by commas)"
        )
    from patentml.ingest.sources import is_data_name

    from patentml_airflow.downloads import list_url

    filter_dates = by_interval and start is not None and end is not None
    selected: list[str] = []
    outside: list[str] = []
    undated: list[str] = []
    for source in sources:
        if is_url(source):
            policy.url(source)
            candidates = list_url(source, policy.url, lambda p: is_data_name(Path(p).name)) if source.endswith("/") else [source]
            if not candidates:
                raise SourceError(f"the listing {source} links no data file")
        elif _SCHEME.match(source):
            raise SourceError(f"source {source!r}: only local paths and http(s) URLs are read")
        else:
            candidates = _local_files(source, policy)
        dated = sorted((d, c) for c in candidates if (d := file_date(c)) is not None)
        keep = {c for _, c in dated[-latest:]} if latest else None
        for candidate in candidates:
            day = file_date(candidate)
            if day is None:
                undated.append(candidate)
                selected.append(candidate)
            elif (candidate in keep) if keep is not None else (not filter_dates or in_interval(day, start, end)):  # type: ignore[arg-type]
                selected.append(candidate)
            else:
                outside.append(candidate)
    return Selection(list(dict.fromkeys(selected)), outside, undated)


def work_items(selected: list[str]) -> list[dict[str, Any]]:
    """One ingest task per file, except the TSV tables of one folder: PatentsView's are joined on patent_id."""
    from patentml.ingest.sources import strip_compression

    items: list[dict[str, Any]] = []
    tables: dict[str, dict[str, Any]] = {}
    for source in selected:
        parent, _, name = source.rstrip("/").rpartition("/")
        if strip_compression(name).lower().endswith(".tsv"):
            if parent not in tables:
                tables[parent] = {"name": f"{parent.rpartition('/')[2] or parent}/*.tsv", "sources": []}
                items.append(tables[parent])
            tables[parent]["sources"].append(source)
        else:
            items.append({"name": name, "sources": [source]})
    return items


def localize(sources: list[str], folder: Path, policy: SourcePolicy) -> list[str]:
    """Local paths for one item's sources: URLs downloaded into ``folder``, local paths checked again
    (a file may have been swapped for a symlink since the selection)."""
    from patentml_airflow.downloads import download

    return [str(download(s, folder, policy.url)) if is_url(s) else policy.local(s) for s in sources]
