"""Prediction speed on CPU: throughput (patents/s) of GloVe+CNN, BERT+CNN and TF-IDF models on a
10,000-abstract file, and cold start (process start to first prediction) of `patentml predict`.

Targets on the 2-core development machine: GloVe+CNN >= 1,000 abstracts/s, cold start < 3 s.

    .venv/bin/python benchmarks/predict.py                      # trains small real models first
    .venv/bin/python benchmarks/predict.py --glove DIR --bert DIR --tfidf DIR   # existing artifacts

Without artifact folders the script trains one epoch of each variant (paper-sized CNN, the packaged
GloVe 6B 50d and MiniLM encoder) on ../shared/data in a private embedded Postgres under --home.
Throughput is measured in-process over the same path the CLI uses (read JSON Lines, check, score,
format, write JSON lines), after the model is loaded; cold start runs the real CLI in a fresh
process against a file:// store whose champion (or --model) is the model, with the model already
in the local cache (the usual case after the first call), and reports the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
TARGET_GLOVE = 1000.0
TARGET_COLD = 3.0
COLD_TEXT = ("A vehicle brake system with a hydraulic actuator and a controller that adjusts the brake torque "
             "from the measured wheel speed.")


def make_input(path: Path, n: int) -> Path:
    """``n`` JSON Lines ``{"id", "abstract"}`` from the shared sample files, repeated as needed."""
    files = sorted(SHARED.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no sample data in {SHARED}")

    def abstracts():  # type: ignore[no-untyped-def]
        for f in files:
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        a = json.loads(line).get("abstract")
                    except json.JSONDecodeError:
                        continue
                    if isinstance(a, str) and a.strip():
                        yield a

    pool = list(itertools.islice(abstracts(), n))
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            out.write(json.dumps({"id": f"B{i}", "abstract": pool[i % len(pool)]}) + "\n")
    return path


def train_models(home: Path, epochs: int, which: list[str]) -> dict[str, Path]:
    from patentml.evaluate import evaluate_run
    from patentml.db.engine import get_engine
    from patentml.db.migrate import ensure_schema
    from patentml.ingest import ingest
    from patentml.settings import Settings, set_settings
    from patentml.splits import rebuild
    from patentml.train import artifact_path, train

    settings = Settings(home=home)
    set_settings(settings)
    engine = get_engine(settings)
    ensure_schema(engine)
    source = SHARED / "uspto-cpc-random.jsonl"
    print(f"training on {source.name} in {home} (embedded Postgres) ...", file=sys.stderr)
    ingest(engine, [source])
    rebuild(engine, settings.label_scheme)
    variants = {"glove": "glove-wbce-full", "bert": "bert-wbce-full", "tfidf": "tfidf-full"}
    out = {}
    for name in which:
        started = time.perf_counter()
        kwargs = {} if name == "tfidf" else {"epochs": epochs}
        run = train(variants[name], settings, engine=engine, **kwargs)
        evaluate_run(engine, run, settings)
        out[name] = artifact_path(engine, run)
        print(f"  {variants[name]}: run {run} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out


def throughput(artifact: Path, data: Path, batch_size: int | None, limit: int | None
               ) -> tuple[float, int, float, float]:
    """(patents/s, patents, seconds, patents per CPU-second) over the CLI's streaming path, model loading excluded.

    CPU time counts every thread of this process, so the last number hardly moves when other
    processes share the cores; on an idle machine the wall rate approaches cores x that rate.
    """
    from patentml.predict import Predictor, predict_stream

    from patentml.sentence import forget_recent

    forget_recent()  # sentence vectors of an earlier model must not help this one
    predictor = Predictor(artifact)
    predictor.predict(["warm up the model with one short abstract about a vehicle brake"])
    with open(data, encoding="utf-8") as fh, open(os.devnull, "w") as sink:
        lines = fh if limit is None else itertools.islice(fh, limit)
        import io

        stream = io.BytesIO("".join(lines).encode("utf-8"))
        started, cpu = time.perf_counter(), time.process_time()
        summary = predict_stream(predictor, stream, sink, batch_size=batch_size)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    predictor.close()
    assert summary["errors"] == 0, summary
    return summary["lines"] / seconds, summary["lines"], seconds, summary["lines"] / cpu


def cold_start(home: Path, store_uri: str, model_id: str | None, repeat: int) -> list[float]:
    """Seconds from process start to the first prediction line of `patentml predict TEXT`."""
    cmd = [str(Path(sys.executable).parent / "patentml"), "--home", str(home), "--store-uri", store_uri,
           "--log-level", "WARNING", "predict", COLD_TEXT]
    if model_id:
        cmd[-1:-1] = ["--model", model_id]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATENTML_")}
    times = []
    for i in range(repeat + 1):  # the first call fills the local cache and is not counted
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        elapsed = time.perf_counter() - started
        _, err = proc.communicate()
        if proc.returncode != 0 or not first.startswith("{"):
            raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}): {err}")
        if i:
            times.append(elapsed)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glove", type=Path, help="GloVe+CNN artifact folder (default: train one)")
    ap.add_argument("--bert", type=Path, help="BERT+CNN artifact folder (default: train one)")
    ap.add_argument("--tfidf", type=Path, help="TF-IDF artifact folder (default: train one)")
    ap.add_argument("--skip", action="append", default=[], choices=["glove", "bert", "tfidf"])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                    help="any other artifact folder to measure (embed-knn, ensemble, ...); repeatable")
    ap.add_argument("--only-models", action="store_true", help="measure only the --model artifacts")
    ap.add_argument("--n", type=int, default=10_000, help="abstracts in the input file (default 10,000)")
    ap.add_argument("--bert-n", type=int, default=None,
                    help="score only this many abstracts with BERT+CNN (it is ~10x slower); default: all")
    ap.add_argument("--epochs", type=int, default=1, help="epochs when training the models here")
    ap.add_argument("--batch-size", type=int, help="override the predictor's batch size")
    ap.add_argument("--repeat", type=int, default=3, help="cold-start runs (median reported)")
    ap.add_argument("--home", type=Path, help="PATENTML_HOME for training and the store (default: a temp folder)")
    args = ap.parse_args()

    import torch

    home = args.home or Path(tempfile.mkdtemp(prefix="patentml-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    which = [] if args.only_models else [m for m in ("glove", "bert", "tfidf") if m not in args.skip]
    artifacts = {m: getattr(args, m) for m in which if getattr(args, m)}
    missing = [m for m in which if m not in artifacts]
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            raise SystemExit(f"--model {item!r}: expected NAME=DIR with an artifact folder")
        which.append(name)
        artifacts[name] = Path(folder)
    if missing:
        artifacts.update(train_models(home, args.epochs, missing))
        from patentml.db import embedded

        embedded.stop(home / "postgres")  # prediction needs no database; free its memory and CPU
    data = make_input(home / "bench-abstracts.jsonl", args.n)

    # A file store with every model, the GloVe one (else the first) as champion: what users run.
    from patentml.artifact import file_sha256
    from patentml.store import CHAMPION, open_store

    store_uri = (home / "bench-store").resolve().as_uri()
    store = open_store(store_uri)
    ids = {}
    for name in which:
        model_id = f"bench-{name}-{file_sha256(artifacts[name] / 'manifest.json')[:8]}"
        if not store.exists(model_id):
            store.put_dir(model_id, artifacts[name])
        ids[name] = model_id
    store.set_pointer(CHAMPION, ids["glove" if "glove" in ids else which[0]])

    rows = []
    for name in which:
        limit = args.bert_n if name == "bert" else None
        load = os.getloadavg()[0]
        rate, n, seconds, per_cpu = throughput(artifacts[name], data, args.batch_size, limit)
        cold = cold_start(home, store_uri, None if ids[name] == store.get_pointer() else ids[name], args.repeat)
        rows.append((name, rate, n, seconds, per_cpu, load, statistics.median(cold), cold))

    print()
    from patentml import variants as registry

    batches = {e: registry.backend_class(e).predict_batch for e in registry.encoders()}
    print(f"CPU: {os.cpu_count()} cores, torch {torch.__version__}; torch models score in {os.cpu_count()} "
          f"single-threaded workers, batch sizes {args.batch_size or batches}; input {data} "
          f"({args.n:,} abstracts)")
    print()
    print("| model | throughput (abstracts/s) | target | abstracts | seconds | abstracts/CPU-s | load avg "
          "| cold start (s, median) | target | runs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    names = {"glove": "GloVe+CNN", "bert": "BERT+CNN", "tfidf": "TF-IDF"}
    for name, rate, n, seconds, per_cpu, load, cold, runs in rows:
        t_rate = f">= {TARGET_GLOVE:,.0f}" if name == "glove" else "-"
        t_cold = f"< {TARGET_COLD:.0f}" if name == "glove" else "-"
        ok = "" if name != "glove" else (" ok" if rate >= TARGET_GLOVE else " BELOW")
        okc = "" if name != "glove" else (" ok" if cold < TARGET_COLD else " BELOW")
        print(f"| {names.get(name, name)} | {rate:,.0f}{ok} | {t_rate} | {n:,} | {seconds:.1f} | {per_cpu:,.0f} | {load:.1f} | "
              f"{cold:.2f}{okc} | {t_cold} | {', '.join(f'{c:.2f}' for c in runs)} |")
    print()
    print("load avg: the 1-minute load average when the throughput run started (other processes on the "
          f"{os.cpu_count()} cores); abstracts/CPU-s counts the CPU time of all scoring threads.")
    print()
    print("artifacts: " + ", ".join(f"{k}={v}" for k, v in artifacts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
