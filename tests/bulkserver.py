"""A local stand-in for bulkdata.uspto.gov: Python's http.server on 127.0.0.1 with directory listings,
HTTP Range requests and a way to drop a connection half-way, serving real-format weekly zip files."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import http.server
import re
import threading
import zipfile
from pathlib import Path
from typing import Iterator

WEEKLY_XML = Path(__file__).parent / "fixtures" / "ingest" / "ipg180102.xml"


def weekly_zip(folder: Path, day: dt.date, week: int) -> Path:
    """``ipgYYMMDD.zip`` holding the fixture's weekly grant XML with the utility patent numbers moved by
    ``week`` (US9855000 -> US98{55+week}000), as USPTO zips one ``.xml`` per week."""
    name = f"ipg{day:%y%m%d}"
    xml = WEEKLY_XML.read_text().replace("<doc-number>09855", f"<doc-number>098{55 + week}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}.xml", xml)
    return path


def weekly_ids(week: int) -> set[str]:
    """The patents a ``weekly_zip(..., week)`` file stores (its two utility grants and the plant patent;
    tests/test_ingest_db.py pins what the fixture holds)."""
    return {f"US98{55 + week}000", f"US98{55 + week}001", "USPP28901"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: "BulkServer._Server"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        wanted = self.headers.get("Range")
        self.server.requests.append((self.command, self.path, wanted))
        path = Path(self.translate_path(self.path))
        redirect = self.server.redirects.get(self.path)
        if redirect:
            self.send_response(302)
            self.send_header("Location", redirect)
            self.end_headers()
            return
        if not path.is_file():
            super().do_GET()
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if match and self.server.ranges:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        cut = self.server.cuts.get(path.name)
        if cut:
            self.server.cuts[path.name] = cut[1:]
            body = body[: cut[0]]
            self.close_connection = True  # announced more than it sends: the client sees a short read
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.server.requests.append((self.command, self.path, None))
        super().do_HEAD()


class BulkServer:
    """Serves ``root`` on 127.0.0.1; ``cuts[name] = [n, ...]`` drops the next responses for that file
    after n bytes, ``redirects[path] = url`` answers 302, ``ranges = False`` ignores Range headers."""

    class _Server(http.server.ThreadingHTTPServer):
        requests: list[tuple[str, str, str | None]]
        cuts: dict[str, list[int]]
        redirects: dict[str, str]
        ranges: bool

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.server = self._Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
        self.server.requests, self.server.cuts, self.server.redirects, self.server.ranges = [], {}, {}, True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        return self.server.requests

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def bulk_server(root: Path) -> Iterator[BulkServer]:
    server = BulkServer(root)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":  # python -m tests.bulkserver FOLDER WEEKS: serve that many weekly files until Ctrl-C
    import sys

    folder, weeks = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3
    last = dt.date(2025, 1, 7)
    for week in range(weeks):
        weekly_zip(folder / "2025", last - dt.timedelta(weeks=weeks - 1 - week), week)
    with bulk_server(folder) as running:
        print(f"{running.url}/2025/", flush=True)
        threading.Event().wait()
