"""Start-up costs a user and the DAG processor feel: every ``patentml ... --help`` (a new process each time)
and parsing ``dags/`` in a fresh interpreter, each against its limit.

    .venv/bin/python benchmarks/startup.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELP_LIMIT_SECONDS = 0.8
#: Parsing all DAG files in a fresh process: well under a second unless something heavy is imported.
PARSE_LIMIT_SECONDS = 1.0
SUBCOMMANDS = [[], ["db", "status"], ["ingest"], ["splits", "rebuild"], ["train"], ["evaluate"], ["report"],
               ["promote"], ["predict"], ["models", "list"], ["variants"]]


def best_of(repeat: int, command: list[str]) -> float:
    import time

    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        best = min(best, time.perf_counter() - started)
    return best


def dag_parse_seconds(repeat: int) -> float:
    script = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests import airflow_env
        import airflow
        from airflow.dag_processing.dagbag import DagBag
        started = time.perf_counter()
        DagBag(dag_folder={str(REPO / "dags")!r})
        print("RESULT " + json.dumps(time.perf_counter() - started))
    """)
    times = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=REPO)
        times.append(json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:]))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    args = parser.parse_args()
    print(f"| what | best of {args.repeat} (ms) | limit (ms) | within |")
    print("|---|---:|---:|---|")
    rows = [(f"patentml {' '.join(sub)} --help", best_of(args.repeat, [sys.executable, "-m", "patentml.cli", *sub,
                                                                        "--help"]), HELP_LIMIT_SECONDS)
            for sub in SUBCOMMANDS]
    rows.append(("parse dags/ (fresh process, after import airflow)", dag_parse_seconds(args.repeat),
                 PARSE_LIMIT_SECONDS))
    for what, seconds, limit in rows:
        print(f"| {what} | {seconds * 1000:.0f} | {limit * 1000:.0f} | {'yes' if seconds < limit else 'NO'} |")


if __name__ == "__main__":
    main()
