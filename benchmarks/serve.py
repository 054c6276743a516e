"""Prediction service speed: throughput (abstracts/s) of batched ``POST /v1/predict`` and p50/p95 latency of
single-abstract requests, each next to the same work done in-process by ``Predictor`` (interleaved, so both
see the same load), and whether the HTTP answers equal the in-process ones.

Limits on the 2-core development machine: single-request p95 <= 250 ms for a TF-IDF champion; batched HTTP
throughput >= 50 % of the in-process rate (JSON and HTTP cost less than half the work).

    PATENTML_HOME=/tmp/me/home .venv/bin/python benchmarks/serve.py            # the champion of that home
    .venv/bin/python benchmarks/serve.py --artifact DIR --abstracts 4000 --batch 64 --singles 300

The service runs as the real CLI (``patentml serve``) in a subprocess on a free 127.0.0.1 port, with the
settings of the environment (``PATENTML_HOME``, ``PATENTML_STORE_URI``, ...); this process is the client.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
LIMIT_P95_MS = 250.0
LIMIT_HTTP_SHARE = 0.5


def abstracts(n: int) -> list[str]:
    """The first ``n`` abstracts of the shared sample files (round robin over the files)."""
    files = [open(f, encoding="utf-8") for f in sorted(SHARED.glob("*.jsonl"))]
    if not files:
        raise SystemExit(f"no sample data in {SHARED}")
    out: list[str] = []
    while len(out) < n and files:
        for fh in list(files):
            line = fh.readline()
            if not line:
                files.remove(fh)
                continue
            text = json.loads(line).get("abstract")
            if isinstance(text, str) and text.strip():
                out.append(text)
    return out[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(port: int, artifact: str | None, model: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "patentml.cli", "--log-level", "WARNING", "serve", "--port", str(port)]
    cmd += ["--artifact", artifact] if artifact else (["--model", model] if model else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(client: "object", proc: subprocess.Popen, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        try:
            if client.get("/healthz").status_code == 200:  # type: ignore[attr-defined]
                return client.get("/v1/model").json()  # type: ignore[attr-defined]
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not become healthy")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", help="serve this local model folder (default: the store's champion)")
    parser.add_argument("--model", help="serve this model id from the store")
    parser.add_argument("--abstracts", type=int, default=2000, help="abstracts for the throughput run")
    parser.add_argument("--batch", type=int, default=64, help="abstracts per batched request")
    parser.add_argument("--singles", type=int, default=200, help="single-abstract requests for the latency run")
    args = parser.parse_args()

    import httpx

    sys.path.insert(0, str(REPO))
    from patentml.predict import Predictor

    texts = abstracts(max(args.abstracts, args.singles))
    port = free_port()
    load_before = os.getloadavg()
    proc = start_service(port, args.artifact, args.model)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            info = wait_ready(client, proc)
            local = Predictor.open(model_id=info["model"]) if not args.artifact else Predictor.open(artifact=args.artifact)
            print(f"model {info['model']} ({info['variant']}), load average {load_before[0]:.1f} on "
                  f"{os.cpu_count()} cores")

            def http(batch: list[str]) -> list[dict]:
                body = {"patents": [{"id": i, "abstract": t} for i, t in enumerate(batch)], "top_k": 5}
                answer = client.post("/v1/predict", json=body)
                answer.raise_for_status()
                return answer.json()["predictions"]

            def direct(batch: list[str]) -> list[dict]:
                return local.predict(batch, top_k=5, ids=list(range(len(batch))))

            http(texts[: args.batch]), direct(texts[: args.batch])  # warm up both paths
            batches = [texts[i : i + args.batch] for i in range(0, args.abstracts, args.batch)]
            seconds = {"http": 0.0, "direct": 0.0}
            same = 0
            for k, batch in enumerate(batches):  # interleaved, alternating which goes first
                order = [("http", http), ("direct", direct)][:: 1 if k % 2 == 0 else -1]
                got = {}
                for name, fn in order:
                    started = time.perf_counter()
                    got[name] = fn(batch)
                    seconds[name] += time.perf_counter() - started
                same += sum(a == b for a, b in zip(got["http"], got["direct"]))
            n = sum(len(b) for b in batches)
            rate = {k: n / v for k, v in seconds.items()}
            latency: dict[str, list[float]] = {"http": [], "direct": []}
            for k, text in enumerate(texts[: args.singles]):
                for name, fn in [("http", http), ("direct", direct)][:: 1 if k % 2 == 0 else -1]:
                    started = time.perf_counter()
                    fn([text])
                    latency[name].append(1000 * (time.perf_counter() - started))
            local.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    share = rate["http"] / rate["direct"]
    p50, p95 = pct(latency["http"], 50), pct(latency["http"], 95)
    print(f"throughput, batches of {args.batch}: HTTP {rate['http']:,.0f} abstracts/s, in-process "
          f"{rate['direct']:,.0f} abstracts/s ({share:.0%} of in-process; limit >= {LIMIT_HTTP_SHARE:.0%}) "
          f"over {n:,} abstracts")
    print(f"single requests ({args.singles}): HTTP p50 {p50:.1f} ms, p95 {p95:.1f} ms (limit p95 <= "
          f"{LIMIT_P95_MS:.0f} ms); in-process p50 {pct(latency['direct'], 50):.1f} ms, "
          f"p95 {pct(latency['direct'], 95):.1f} ms")
    print(f"same answers over HTTP as in-process: {same:,} of {n:,}")
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    return 0 if same == n else 1


if __name__ == "__main__":
    sys.exit(main())
