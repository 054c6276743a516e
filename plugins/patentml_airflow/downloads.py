"""HTTP for ingest: directory listings, and downloads that resume, are cached and are checked by size.

A download goes to ``.part`` beside its target and is renamed only once its size matches what the
server announced (``Content-Length``, or the total of a ``Content-Range``), so a cached file is a
complete one. An interrupted download keeps its ``.part``; the next attempt, the task's retry or the
next run asks for the rest with an HTTP ``Range`` request. Every URL, redirects included, must pass
the caller's ``allow`` check (the allowed hosts of :mod:`patentml_airflow.sources`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator

from patentml_airflow.sources import SourceError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Attempts per download in one call; each one resumes where the last stopped.
ATTEMPTS = 3
LISTING_BYTES = 16 << 20
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)")

Allow = Callable[[str], str]


class _ShortRead(OSError):
    """The connection ended before the announced size (http.client reports that as a plain end)."""


def _opener(allow: Allow) -> urllib.request.OpenerDirector:
    class Redirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
            allow(newurl)  # an allowed host must not hand us on to one that is not
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(Redirects)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self.links.append(href)


def list_url(url: str, allow: Allow, is_data: Callable[[str], bool], timeout: float = 60.0) -> list[str]:
    """Absolute URLs of the data files a directory listing page links to, below the listing itself."""
    allow(url)
    try:
        with _opener(allow).open(url, timeout=timeout) as response:
            charset = response.headers.get_content_charset() or "utf-8"
            page = response.read(LISTING_BYTES).decode(charset, "replace")
    except (OSError, http.client.HTTPException) as exc:
        raise SourceError(f"listing {url} failed: {exc}") from exc
    parser = _Links()
    parser.feed(page)
    found = [urllib.parse.urljoin(url, href) for href in parser.links]
    return list(dict.fromkeys(u for u in found if u.startswith(url) and is_data(urllib.parse.urlsplit(u).path)))


def cache_path(url: str, folder: Path) -> Path:
    """Where ``url`` is cached: files of one remote folder share a local one (PatentsView tables are
    joined by folder), named after the remote folder's URL so two sources never collide."""
    parent, _, name = urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl().rpartition("/")
    name = name if name not in ("", ".", "..") else "download"
    return folder / hashlib.sha256(parent.encode()).hexdigest()[:12] / name


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer per cached file (two runs, or the main job beside a worker)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remote_size(url: str, allow: Allow, timeout: float = 60.0) -> int | None:
    """``Content-Length`` of a HEAD request; None when the server does not say or cannot be asked."""
    try:
        with _opener(allow).open(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except (OSError, http.client.HTTPException) as exc:
        log.warning("Could not ask %s for its size (%s): keeping the cached copy", url, exc)
        return None
    return int(length) if length and length.isdigit() else None


def download(url: str, folder: Path, allow: Allow, timeout: float = 300.0, attempts: int = ATTEMPTS,
             backoff: float = 2.0) -> Path:
    """Fetch ``url`` into the cache under ``folder``, resuming a partial download; returns the local path.

    Waits ``backoff`` seconds before the second attempt, twice that before the third, and so on (at most 30 s).
    """
    allow(url)
    target = cache_path(url, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with _locked(target.with_name(target.name + ".lock")):
        if target.is_file():
            size = remote_size(url, allow)
            if size is None or size == target.stat().st_size:
                log.info("Reusing the downloaded %s (%d bytes)", target, target.stat().st_size)
                return target
            log.warning("%s changed upstream (%d bytes, cached %d): downloading it again", url, size,
                        target.stat().st_size)
            target.unlink()
        opener = _opener(allow)
        for attempt in range(1, attempts + 1):
            try:
                total = _fetch(opener, url, partial, timeout)
                break
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise SourceError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
                problem: Exception = exc
            except (OSError, http.client.HTTPException) as exc:
                problem = exc
            have = partial.stat().st_size if partial.exists() else 0
            log.warning("Download of %s stopped at %d bytes (attempt %d of %d): %s", url, have, attempt, attempts, problem)
            if attempt == attempts:
                raise SourceError(
                    f"downloading {url} failed after {attempts} attempts: {problem}; the {have} bytes "
                    f"so far are kept in {partial} and the next try resumes from there"
                ) from problem
            time.sleep(min(backoff * 2 ** (attempt - 1), 30))
        size = partial.stat().st_size
        if total is not None and size != total:  # more than announced: nothing to resume
            partial.unlink()
            raise SourceError(f"downloading {url}: got {size} bytes where the server announced {total}")
        os.replace(partial, target)
    log.info("Downloaded %s to %s (%d bytes)", url, target, size)
    return target


def _fetch(opener: urllib.request.OpenerDirector, url: str, partial: Path, timeout: float) -> int | None:
    """Append the rest of ``url`` to ``partial``; returns the file's full size when the server says it."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after byte `have`: the part may be whole already
            match = _CONTENT_RANGE.fullmatch(exc.headers.get("Content-Range", ""))
            if match and match.group(2) == str(have):
                return have
            partial.unlink()  # larger than the file now is: start again
            return _fetch(opener, url, partial, timeout)
        raise
    with response:
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if not match or match.group(1) != str(have):
                raise SourceError(f"{url}: the server resumed at the wrong place ({response.headers.get('Content-Range')})")
            total = None if match.group(2) == "*" else int(match.group(2))
            mode = "ab"
            log.info("Resuming %s at byte %d", url, have)
        else:  # 200: the whole file (a server without Range support starts over)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        with open(partial, mode) as out:
            shutil.copyfileobj(response, out, CHUNK)
    size = partial.stat().st_size
    if total is not None and size < total:
        raise _ShortRead(f"got {size} of {total} bytes")
    return total
