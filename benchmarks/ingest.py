"""Ingest speed and memory, next to the limit: a plain COPY of the same rows into an unindexed table.

    .venv/bin/python benchmarks/ingest.py                 # the shared JSONL files at 1x and 4x
    .venv/bin/python benchmarks/ingest.py --scales 1 4 16 --repeat 5
    .venv/bin/python benchmarks/ingest.py --scale 100     # ~2M rows (USPTO-2M size), once each

For each input size it measures, each in a fresh database and a fresh child process (so the peak
memory of one measurement is not the high-water mark of another), the fastest of ``--repeat`` runs:

* ``patentml ingest``: ``patentml.ingest.ingest()`` on the files (parse, canonical ids, labels,
  content hashes; new patents copied into the indexed ``patents``/``patent_labels``/``patent_sources``,
  the rest staged, deduplicated and upserted; one transaction per file);
* plain COPY: the same JSONL lines read, ``json.loads``-ed, written as COPY text and copied into an
  unindexed table with the same columns. Nothing can load these rows much faster from Python.

Input ``Nx`` is the shared files with every row repeated N times under rewritten ids (copy k adds
k * 10^9 to the patent number), so the 4x corpus has exactly 4x the distinct patents.
The database is ``PATENTML_DATABASE_URL`` when set (its user must be allowed to CREATE DATABASE),
else an embedded Postgres started in a temporary folder and stopped at the end. Besides wall-clock
rates it prints CPU seconds (client + server, embedded server only), which a busy machine inflates
far less than wall time; and the tracemalloc peak of the Python heap, from a separate run. Last,
each size next to its limit (``RATIO_LIMIT``, and ``RSS_LIMIT_MB`` at the 2M-row size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
CHUNK_ROWS = 5000

#: What ingest must reach (issue 13): this share of a plain COPY's rate at every size, and a peak
#: resident memory under this many MB for a corpus of USPTO-2M size (2M rows).
RATIO_LIMIT = 0.5
RSS_LIMIT_MB = 1024
RSS_LIMIT_ROWS = 2_000_000

PLAIN_DDL = """
CREATE TABLE plain_copy (
    patent_id text, title text, abstract text, date date, labels text[], label_scheme text
)
"""

_ID = re.compile(r"^(?P<prefix>[A-Z]*?)(?P<number>[0-9]+)$")


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child would report its
    parent's size at the fork if that was larger.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu_seconds(pg_dir: Path | None) -> float | None:
    """CPU used so far by the embedded server: the postmaster, its live children, and reaped ones.

    Exited backends are counted through the postmaster's cutime/cstime. None when not measurable
    (a server given by PATENTML_DATABASE_URL, or no /proc).
    """
    if pg_dir is None:
        return None
    try:
        pm = int((pg_dir / "data" / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")

        def fields(pid: int | str) -> list[str]:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

        own = fields(pm)
        total = sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    f = fields(entry)
                except OSError:
                    continue  # exited meanwhile
                if int(f[1]) == pm:  # ppid
                    total += int(f[11]) + int(f[12])
        return total / tick
    except (OSError, ValueError, IndexError):
        return None


# --- inputs -------------------------------------------------------------------------------------


def rewrite_id(raw: str, copy: int) -> str:
    """The id of copy ``copy`` of a row: the patent number plus ``copy`` * 10^9 (copy 0 is unchanged)."""
    if copy == 0:
        return raw
    match = _ID.match(raw.replace(" ", "").upper())
    if match is None:
        raise ValueError(f"cannot rewrite id {raw!r}")
    return f"{match['prefix']}{int(match['number']) + copy * 1_000_000_000}"


def make_inputs(sources: list[Path], scale: int, folder: Path) -> list[Path]:
    """The shared files with every row repeated ``scale`` times under rewritten ids (same file names)."""
    if scale == 1:
        return sources
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sources:
        dest = folder / src.name
        with open(dest, "wb") as fh:
            for copy in range(scale):
                with open(src, "rb") as inp:
                    for line in inp:
                        if not line.strip():
                            continue
                        obj = json.loads(line)
                        obj["id"] = rewrite_id(obj["id"], copy)
                        fh.write(json.dumps(obj, ensure_ascii=False).encode() + b"\n")
        out.append(dest)
    return out


# --- children: one measurement each ------------------------------------------------------------


def child_ingest(url: str, files: list[str], trace: bool = False) -> dict[str, object]:
    import tracemalloc

    from sqlalchemy import create_engine, text

    from patentml.ingest import ingest

    engine = create_engine("postgresql+psycopg2://" + url.split("://", 1)[1])
    with engine.connect():
        pass
    if trace:
        tracemalloc.start()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    summaries = ingest(engine, files)
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    py_peak = tracemalloc.get_traced_memory()[1] / 1e6 if trace else None
    tracemalloc.stop()
    with engine.connect() as conn:
        patents = conn.execute(text("SELECT count(*) FROM patents")).scalar()
        labels = conn.execute(text("SELECT count(*) FROM patent_labels")).scalar()
    return {
        "records": sum(s.read for s in summaries),
        "rejected": sum(s.rejected for s in summaries),
        "patents": patents,
        "labels": labels,
        "seconds": seconds,
        "client_cpu": cpu,
        "peak_rss_mb": _peak_rss_mb(),
        "py_peak_mb": py_peak,
    }


def _esc(value: object) -> str:
    if value is None:
        return r"\N"
    s = str(value)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return s.replace("\x00", "")


def child_plain(url: str, files: list[str]) -> dict[str, object]:
    """The limit: read, json.loads, format COPY text, COPY into an unindexed table; nothing else."""
    import io

    import psycopg2

    conn = psycopg2.connect(url)
    cur = conn.cursor()
    sql = "COPY plain_copy (patent_id, title, abstract, date, labels, label_scheme) FROM STDIN"
    cpu = _cpu_seconds()
    started = time.perf_counter()
    rows = 0
    for path in files:
        buf = io.StringIO()
        pending = 0
        with open(path, "rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                obj = json.loads(raw)
                labels = obj.get("labels") or []
                buf.write(
                    f"{_esc(obj.get('id'))}\t{_esc(obj.get('title'))}\t{_esc(obj.get('abstract'))}\t"
                    f"{_esc(obj.get('date'))}\t{{{','.join(labels)}}}\t{_esc(obj.get('label_scheme'))}\n"
                )
                rows += 1
                pending += 1
                if pending == CHUNK_ROWS:
                    buf.seek(0)
                    cur.copy_expert(sql, buf)
                    buf, pending = io.StringIO(), 0
        if pending:
            buf.seek(0)
            cur.copy_expert(sql, buf)
    conn.commit()
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    cur.execute("SELECT count(*) FROM plain_copy")
    stored = cur.fetchone()[0]
    conn.close()
    return {
        "records": rows, "patents": stored, "seconds": seconds, "client_cpu": cpu, "peak_rss_mb": _peak_rss_mb()
    }


# --- the driver ---------------------------------------------------------------------------------


def _with_db(url: str, name: str) -> str:
    return urlsplit(url)._replace(path="/" + name).geturl()


def _admin(url: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def fresh_database(admin_url: str, mode: str) -> str:
    import psycopg2

    name = f"bench_{mode}_{uuid.uuid4().hex[:8]}"
    _admin(admin_url, f'CREATE DATABASE "{name}"')
    url = _with_db(admin_url, name)
    if mode == "ingest":
        from sqlalchemy import create_engine

        from patentml.db.migrate import upgrade

        engine = create_engine("postgresql+psycopg2://" + url.split("://", 1)[1])
        upgrade(engine)
        engine.dispose()
    else:
        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute(PLAIN_DDL)
        conn.commit()
        conn.close()
    return url


@contextlib.contextmanager
def admin_database(workdir: Path) -> Iterator[tuple[str, Path | None]]:
    """(admin URL, embedded server folder or None): ``PATENTML_DATABASE_URL`` when set, else an embedded
    Postgres in ``workdir``, stopped on exit."""
    configured = os.environ.get("PATENTML_DATABASE_URL")
    if configured:
        from patentml.db.engine import libpq_url

        print("database: PATENTML_DATABASE_URL")
        yield libpq_url(configured), None
        return
    from patentml.db import embedded

    pg_dir = workdir / "pg"
    admin = embedded.server_uri(pg_dir, database="postgres")
    print(f"database: embedded Postgres in {pg_dir}")
    try:
        yield admin, pg_dir
    finally:
        embedded.stop(pg_dir)


def measure(admin_url: str, mode: str, files: list[Path], pg_dir: Path | None) -> dict[str, object]:
    """One measurement in a fresh database and a fresh process; ``mode`` is ingest, trace or plain."""
    url = fresh_database(admin_url, "plain" if mode == "plain" else "ingest")
    try:
        server_before = server_cpu_seconds(pg_dir)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--url", url, *map(str, files)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        server_after = server_cpu_seconds(pg_dir)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} child failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if server_before is not None and server_after is not None:
            # Server CPU over the child's whole life (connecting, counting): a slight overestimate.
            result["cpu"] = result["client_cpu"] + server_after - server_before
        return result
    finally:
        _admin(admin_url, f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')


def _size_mb(files: list[Path]) -> float:
    return sum(f.stat().st_size for f in files) / 1e6


def _cpu_text(result: dict[str, object]) -> str:
    return f"{result['cpu']:.2f}" if "cpu" in result else "n/a"


def run(admin_url: str, sources: list[Path], scales: list[int], repeat: int, workdir: Path,
        pg_dir: Path | None, trace: bool) -> list[dict[str, object]]:
    header = (
        f"{'input':>5} {'MB':>6} {'records':>8} {'ingest s':>8} {'rows/s':>7} {'COPY s':>6} "
        f"{'COPY rows/s':>11} {'ratio':>5} {'RSS MB':>6} {'COPY RSS':>8} {'Py peak MB':>10} "
        f"{'CPU s':>6} {'COPY CPU s':>10} {'CPU ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for scale in scales:
        files = make_inputs(sources, scale, workdir / f"x{scale}")
        best: dict[str, dict[str, object]] = {}
        for _ in range(repeat):
            for mode in ("ingest", "plain"):
                result = measure(admin_url, mode, files, pg_dir)
                if mode not in best or result["seconds"] < best[mode]["seconds"]:  # type: ignore[operator]
                    best[mode] = result
        ing, plain = best["ingest"], best["plain"]
        # tracemalloc slows Python down: its own run, for the memory column only.
        py_peak = measure(admin_url, "trace", files, pg_dir)["py_peak_mb"] if trace else None
        rate = ing["records"] / ing["seconds"]  # type: ignore[operator]
        plain_rate = plain["records"] / plain["seconds"]  # type: ignore[operator]
        cpu_ratio = (
            f"{plain['cpu'] / ing['cpu']:.0%}" if "cpu" in ing and "cpu" in plain else "n/a"  # type: ignore[operator]
        )
        print(
            f"{str(scale) + 'x':>5} {_size_mb(files):6.1f} {ing['records']:8,} {ing['seconds']:8.2f} {rate:7,.0f} "
            f"{plain['seconds']:6.2f} {plain_rate:11,.0f} {rate / plain_rate:5.0%} {ing['peak_rss_mb']:6.0f} "
            f"{plain['peak_rss_mb']:8.0f} {(f'{py_peak:.1f}' if py_peak is not None else 'n/a'):>10} "
            f"{_cpu_text(ing):>6} {_cpu_text(plain):>10} {cpu_ratio:>9}",
            flush=True,
        )
        rows.append({"scale": scale, "ingest": ing, "plain": plain, "py_peak_mb": py_peak, "ratio": rate / plain_rate})
    print_limits(rows)
    print(
        "\nratio = ingest rows/s / plain COPY rows/s (wall clock, fastest of the repeats); RSS = peak resident\n"
        "memory of the measuring process; Py peak = tracemalloc peak of the Python heap during ingest();\n"
        "CPU s = client + Postgres server CPU seconds (embedded server only), CPU ratio = COPY CPU / ingest CPU."
    )
    return rows


def print_limits(rows: list[dict[str, object]]) -> None:
    """Each measurement next to its limit: the rate ratio at every size, peak RSS at the 2M-row size."""
    print()
    for row in rows:
        ing = row["ingest"]
        ratio = float(row["ratio"])  # type: ignore[arg-type]
        verdict = "meets" if ratio >= RATIO_LIMIT else "MISSES"
        line = (f"{row['scale']}x: ingest {ing['records']:,} rows at {ratio:.0%} of plain COPY "  # type: ignore[index]
                f"({verdict} the limit of {RATIO_LIMIT:.0%})")
        if int(ing["records"]) >= RSS_LIMIT_ROWS * 0.95:  # type: ignore[index,call-overload]
            rss = float(ing["peak_rss_mb"])  # type: ignore[index,arg-type]
            verdict = "meets" if rss < RSS_LIMIT_MB else "MISSES"
            line += f"; peak RSS {rss:,.0f} MB ({verdict} the limit of {RSS_LIMIT_MB:,} MB at 2M rows)"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4], help="input sizes (default 1 4)")
    parser.add_argument("--scale", type=int, help="one size, measured once (100: about 2M rows, USPTO-2M's size)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest counts")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="folder of the JSONL files")
    parser.add_argument("--no-trace", action="store_true", help="skip the tracemalloc run (Py peak MB)")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    parser.add_argument("--child", choices=["ingest", "trace", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale:
        args.scales, args.repeat, args.no_trace = [args.scale], 1, True

    if args.child == "plain":
        print(json.dumps(child_plain(args.url, args.files)))
        return 0
    if args.child:
        print(json.dumps(child_ingest(args.url, args.files, trace=args.child == "trace")))
        return 0

    sources = sorted(args.data.glob("*.jsonl"))
    if not sources:
        print(f"no *.jsonl files in {args.data}", file=sys.stderr)
        return 1
    print(f"input: {', '.join(s.name for s in sources)}; {os.cpu_count()} CPUs; fastest of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="patentml-bench-") as tmp, admin_database(Path(tmp)) as (admin, pg_dir):
        rows = run(admin, sources, args.scales, args.repeat, Path(tmp), pg_dir, not args.no_trace)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
