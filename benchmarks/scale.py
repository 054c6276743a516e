"""Cost curves towards USPTO-2M: ingest, splits, evaluation writes, and each nightly variant's training and prediction.

    .venv/bin/python benchmarks/scale.py                                  # everything at the default sizes
    .venv/bin/python benchmarks/scale.py --parts db --db-scales 1 10 100  # 20k, 200k, 2M rows
    .venv/bin/python benchmarks/scale.py --parts evalwrite --eval-patents 400000
    .venv/bin/python benchmarks/scale.py --parts encoder variants --train-sizes 20000 80000

Corpora are the shared JSONL files repeated under new ids exactly as ``benchmarks/ingest.py`` builds
them (its ``make_inputs``; ``Nx`` = N copies). Every measurement runs in a fresh child process and
reports its wall seconds and its peak resident memory (VmHWM, as ingest.py measures it).

* ``db``: ``patentml.ingest.ingest`` (ingest.py's own child) then ``patentml.splits.rebuild`` in a fresh
  database, at each ``--db-scales`` size;
* ``evalwrite``: ``patentml.db.results.replace_evaluation`` (the call ``patentml.evaluate`` makes) with
  synthetic ``predictions`` rows (true labels, decided labels, top-5 scores) for ``--eval-patents`` patents;
* ``encoder``: the MiniLM inference encoder (``patentml.sentence.inference_encoder``: ONNX fp32 by
  default, ``PATENTML_ENCODER_RUNTIME=torch`` for torch) on ``--encode-texts`` real abstracts;
* ``variants``: each nightly variant's ``fit`` and ``predict_scores`` at each ``--train-sizes`` size.
  The sentence-vector variants get synthetic vectors (label prototypes plus noise) in place of the
  encoder, whose cost is linear per abstract and added from the ``encoder`` rate; repeated texts
  would otherwise hit the vector memo. GloVe+CNN trains ``--glove-epochs`` epochs and is projected to
  its epoch cap; embed-linear's encoder fine-tuning (the nightly's setting) is not run here.

The growth exponent of each cost is the log-log slope between the two largest measured sizes;
projected rows (``proj``) extend it to the sizes asked for with ``--project-sizes``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as ingest_bench  # (benchmarks/ingest.py: corpora, children, databases)

REPO = ingest_bench.REPO


def nightly_variants() -> list[str]:
    """The nightly matrix's variants measured here: the last of each encoder in plugins' DEFAULT_VARIANTS
    (glove-wbce stands for both GloVe losses), without the backends on frozen token vectors (the BERT
    CNNs, the GPU-only part of the matrix)."""
    sys.path.insert(0, str(REPO))
    from patentml.variants import backend_class, parse_variant
    from patentml.variants.base import TOKEN_VECTORS
    from plugins.patentml_airflow.config import DEFAULT_VARIANTS

    last = {parse_variant(v).encoder: v for v in DEFAULT_VARIANTS}
    return [v for enc, v in last.items() if TOKEN_VECTORS not in backend_class(enc).caches]


VALID_ROWS = 2000
PREDICT_ROWS = 2000
VECTOR_DIM = 384  # MiniLM-L6


# --- children -----------------------------------------------------------------------------------


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine

    return create_engine("postgresql+psycopg2://" + url.split("://", 1)[1])


def child_splits(url: str, scheme: str) -> dict[str, Any]:
    from patentml.splits import rebuild

    engine = _engine(url)
    started = time.perf_counter()
    info = rebuild(engine, scheme)
    seconds = time.perf_counter() - started
    n = sum(s["n_patents"] for s in info.stats if s["dataset"] == "full")
    return {"seconds": seconds, "rows": n, "peak_rss_mb": ingest_bench._peak_rss_mb()}


def _real_rows(data: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(data.glob("*.jsonl")):
        with open(path, "rb") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    return [r for r in rows if r.get("abstract") and r.get("labels")]


def child_evalwrite(url: str, n: int, data: Path) -> dict[str, Any]:
    """``predictions`` rows of a ``n``-patent test split written the way evaluation writes them."""
    import random

    from sqlalchemy import insert

    from patentml.db import results
    from patentml.db.models import DatasetSnapshot, Run
    from patentml.evaluate import SCORE_DIGITS, TOP_SCORES

    labels = sorted({lab for r in _real_rows(data) for lab in r["labels"]})
    engine = _engine(url)
    with engine.begin() as conn:
        snap = conn.execute(insert(DatasetSnapshot.__table__).values(label_scheme="CPC", fingerprint="synthetic",
                                                                     params={}).returning(
            DatasetSnapshot.__table__.c.snapshot_id)).scalar()
        run_id = conn.execute(insert(Run.__table__).values(variant="tfidf-svm-full", encoder="tfidf-svm", dataset="full",
                                                           snapshot_id=snap).returning(Run.__table__.c.run_id)).scalar()
    rng = random.Random(0)

    def rows() -> Any:
        for i in range(n):
            top = rng.sample(labels, TOP_SCORES)
            scores = sorted((rng.random() for _ in top), reverse=True)
            yield {"patent_id": f"US{9_000_000_000 + i}", "true_labels": top[:rng.randint(1, 3)],
                   "pred_labels": top[:rng.randint(0, 2)],
                   "top_scores": {lab: round(s, SCORE_DIGITS) for lab, s in zip(top, scores)}}

    # evaluate.py builds the whole list before writing: so does this.
    predictions = list(rows())
    started = time.perf_counter()
    with engine.begin() as conn:
        results.replace_evaluation(conn, run_id, "test", [], 0, 0.0, predictions)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": n, "peak_rss_mb": ingest_bench._peak_rss_mb()}


def child_encoder(n: int, data: Path) -> dict[str, Any]:
    from patentml.sentence import inference_encoder

    texts = [r["abstract"] for r in _real_rows(data)[:n]]
    encoder = inference_encoder(None, 256, 32)
    encoder.encode(texts[:8])  # load and warm up
    started = time.perf_counter()
    encoder.encode(texts)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": len(texts), "peak_rss_mb": ingest_bench._peak_rss_mb(),
            "encoder": type(encoder).__name__}


class SyntheticEncoder:
    """Stands in for MiniLM: unit vectors near the mean of the text's label prototypes (no model run)."""

    key = "synthetic-bench"
    dim = VECTOR_DIM

    def __init__(self, label_of: dict[str, list[str]]) -> None:
        import numpy as np

        self.label_of = label_of
        rng = np.random.default_rng(0)
        names = sorted({lab for labs in label_of.values() for lab in labs})
        self.proto = {lab: rng.standard_normal(VECTOR_DIM).astype(np.float32) for lab in names}
        self.rng = rng

    def encode(self, texts: list[str], progress: bool = False) -> Any:
        import numpy as np

        out = self.rng.standard_normal((len(texts), VECTOR_DIM)).astype(np.float32) * 1.5
        for i, t in enumerate(texts):
            for lab in self.label_of.get(t, []):
                out[i] += self.proto[lab]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def save(self, folder: Path, weights: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)


def child_variant(variant: str, n: int, data: Path, glove_epochs: int) -> dict[str, Any]:
    """Fit ``variant`` on ``n`` training patents (real texts repeated; copies differ by trailing spaces,
    so vector memos see distinct texts while tokenizers see the same words), then predict.

    ``variant`` may carry settings after a colon: ``embed-knn-full:ann_threshold=1000`` (HNSW at any size).
    """
    from patentml.variants import backend_class, parse_variant
    from patentml.variants.base import SENTENCE_VECTORS, FitContext, ListCorpus

    sys.path.insert(0, str(REPO))
    from plugins.patentml_airflow.config import DEFAULT_OVERRIDES

    real = _real_rows(data)
    valid_rows, pool = real[:VALID_ROWS], real[VALID_ROWS:]
    docs = [(f"T{i}", pool[i % len(pool)]["abstract"] + " " * (i // len(pool)), pool[i % len(pool)]["labels"])
            for i in range(n)]
    valid = [(f"V{i}", r["abstract"], r["labels"]) for i, r in enumerate(valid_rows)]
    labels = sorted({lab for _, _, labs in docs for lab in labs})
    name, _, extra = variant.partition(":")
    spec = parse_variant(name)
    cls = backend_class(spec.encoder)
    params = {k: v for k, v in DEFAULT_OVERRIDES.get(spec.encoder, {}).items() if k in cls.DEFAULTS}
    params.update({k: json.loads(v) for k, v in (kv.split("=", 1) for kv in extra.split(",") if kv)})
    notes = []
    if params.pop("fine_tune", False):
        notes.append("head only (fine_tune not run)")
    if spec.loss is not None and "loss" in cls.DEFAULTS:
        params["loss"] = spec.loss
    epoch_cap = None
    if "epochs" in cls.DEFAULTS and spec.encoder == "glove":
        epoch_cap = int(cls.DEFAULTS["epochs"])
        params["epochs"] = glove_epochs
        notes.append(f"{glove_epochs} of {epoch_cap} epochs")
    backend = cls(labels, params)
    if SENTENCE_VECTORS in cls.caches:
        backend.encoder = SyntheticEncoder({t: labs for _, t, labs in docs + valid})
        notes.append("synthetic vectors")
    epochs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="scale-fit-") as work:
        started = time.perf_counter()
        backend.fit(ListCorpus(docs), ListCorpus(valid),
                    FitContext(work_dir=Path(work), on_epoch=lambda e: epochs.append(e.seconds)))
        fit_seconds = time.perf_counter() - started
    texts = [r["abstract"] + "  \t" for r in real[VALID_ROWS:VALID_ROWS + PREDICT_ROWS]]
    started = time.perf_counter()
    backend.predict_scores(texts)
    predict_seconds = time.perf_counter() - started
    return {"seconds": fit_seconds, "rows": n, "predict_seconds": predict_seconds, "predict_rows": len(texts),
            "peak_rss_mb": ingest_bench._peak_rss_mb(), "epochs": len(epochs), "epoch_seconds": sum(epochs) / max(len(epochs), 1), "epoch_cap": epoch_cap,
            "note": "; ".join(notes)}


# --- the driver ---------------------------------------------------------------------------------


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, *args], check=False, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:4]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ingest_child(url: str, files: list[Path]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, ingest_bench.__file__, "--child", "ingest", "--url", url, *map(str, files)],
                          check=False, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"ingest child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _drop(admin: str, url: str) -> None:
    from urllib.parse import urlsplit

    ingest_bench._admin(admin, f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')


def _row(size: int, what: str, seconds: float, rows: int, rss: float | None, kind: str, note: str = ""
         ) -> dict[str, Any]:
    return {"size": size, "what": what, "seconds": seconds, "rows_per_s": rows / max(seconds, 1e-9),
            "peak_rss_mb": rss, "kind": kind, "note": note}


def _print(row: dict[str, Any]) -> None:
    rss = f"{row['peak_rss_mb']:,.0f}" if row["peak_rss_mb"] is not None else "-"
    print(f"{row['size']:>9,} {row['what']:<34} {row['seconds']:>10,.1f} {row['rows_per_s']:>10,.0f} {rss:>8} "
          f"{row['kind']:<5} {row['note']}", flush=True)


def part_db(admin: str, sources: list[Path], scales: list[int], workdir: Path, scheme: str) -> list[dict[str, Any]]:
    out = []
    for scale in scales:
        files = ingest_bench.make_inputs(sources, scale, workdir / f"x{scale}")
        url = ingest_bench.fresh_database(admin, "ingest")
        try:
            ing = _ingest_child(url, files)
            size = int(ing["records"])
            out.append(_row(size, "ingest", ing["seconds"], size, ing["peak_rss_mb"], "meas", f"{scale}x"))
            _print(out[-1])
            sp = _child(["--child", "splits", "--url", url, "--scheme", scheme])
            out.append(_row(size, f"splits rebuild ({scheme})", sp["seconds"], sp["rows"], sp["peak_rss_mb"], "meas",
                            f"{sp['rows']:,} patents with {scheme} labels"))
            _print(out[-1])
        finally:
            _drop(admin, url)
        if scale != 1:
            for f in files:
                f.unlink()
    return out


def part_evalwrite(admin: str, n: int, data: Path) -> list[dict[str, Any]]:
    url = ingest_bench.fresh_database(admin, "ingest")
    try:
        r = _child(["--child", "evalwrite", "--url", url, "--n", str(n), "--data", str(data)])
    finally:
        _drop(admin, url)
    row = _row(n, "evaluation writes (predictions)", r["seconds"], n, r["peak_rss_mb"], "meas",
               "results.replace_evaluation, top-5 scores")
    _print(row)
    return [row]


def growth(points: list[tuple[int, float]]) -> float:
    """Log-log slope between the two largest measured sizes (1.0 when only one was measured)."""
    pts = sorted(points)
    if len(pts) < 2:
        return 1.0
    (n1, s1), (n2, s2) = pts[-2], pts[-1]
    return math.log(s2 / s1) / math.log(n2 / n1)


def part_variants(sizes: list[int], project: list[int], data: Path, glove_epochs: int, variants: list[str],
                  encoder_rate: float | None) -> list[dict[str, Any]]:
    out = []
    for variant in variants:
        fits, predicts = [], []
        for n in sizes:
            r = _child(["--child", "variant", "--variant", variant, "--n", str(n), "--data", str(data),
                        "--glove-epochs", str(glove_epochs)])
            epochs = f"{r['epochs']} epoch(s) of {r['epoch_seconds']:.1f} s" if r["epochs"] else ""
            seconds, note = r["seconds"], "; ".join(x for x in (r["note"], epochs) if x)
            out.append(_row(n, f"{variant} fit", seconds, n, r["peak_rss_mb"], "meas", note))
            if r["epoch_cap"]:
                # The measured fit (setup, its epochs, decision rule) plus the remaining epochs at the same rate.
                seconds += (r["epoch_cap"] - r["epochs"]) * r["epoch_seconds"]
                _print(out[-1])
                out.append(_row(n, f"{variant} fit, {r['epoch_cap']} epochs", seconds, n, None, "proj",
                                "+ remaining epochs at the measured rate (early stopping may end sooner)"))
            _print(out[-1])
            fits.append((n, seconds))
            predicts.append((n, r["predict_seconds"] / r["predict_rows"]))
            out.append(_row(n, f"{variant} predict", r["predict_seconds"], r["predict_rows"], None, "meas",
                            f"{r['predict_rows']} abstracts" + ("; + encoder" if "synthetic" in r["note"] else "")))
            _print(out[-1])
        b = growth(fits)
        n0, s0 = max(fits)
        for n in project:
            if n > n0:
                out.append(_row(n, f"{variant} fit", s0 * (n / n0) ** b, n, None, "proj", f"exponent {b:.2f}"))
                _print(out[-1])
        if encoder_rate and "embed" in variant:
            for n in sorted(set(sizes) | set(project)):
                out.append(_row(n, "  + MiniLM encoding of the train split", n / encoder_rate, n, None, "proj",
                                f"linear at {encoder_rate:.1f} abstracts/s (cold cache)"))
                _print(out[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--parts", nargs="+", default=["db", "evalwrite", "encoder", "variants"],
                        choices=["db", "evalwrite", "encoder", "variants"])
    parser.add_argument("--db-scales", type=int, nargs="+", default=[1, 10, 100],
                        help="corpus copies for ingest + splits (1, 10, 100: 20k, 200k, 2M rows)")
    parser.add_argument("--scheme", help="label scheme of the splits rebuild (default: PATENTML_LABEL_SCHEME's)")
    parser.add_argument("--eval-patents", type=int, default=400_000)
    parser.add_argument("--encode-texts", type=int, default=300)
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[20_000, 80_000])
    parser.add_argument("--project-sizes", type=int, nargs="+", default=[320_000, 1_600_000])
    parser.add_argument("--variants", nargs="+", help="default: the nightly's (nightly_variants())")
    parser.add_argument("--glove-epochs", type=int, default=1)
    parser.add_argument("--encoder-rate", type=float, help="abstracts/s of the encoder (skips measuring it)")
    parser.add_argument("--data", type=Path, default=ingest_bench.SHARED_DATA)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--child", choices=["splits", "evalwrite", "encoder", "variant"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.scheme is None:
        from patentml.settings import get_settings

        args.scheme = get_settings().label_scheme
    if args.child:
        result = {"splits": lambda: child_splits(args.url, args.scheme),
                  "evalwrite": lambda: child_evalwrite(args.url, args.n, args.data),
                  "encoder": lambda: child_encoder(args.n, args.data),
                  "variant": lambda: child_variant(args.variant, args.n, args.data, args.glove_epochs)}[args.child]()
        print(json.dumps(result))
        return 0

    sources = sorted(args.data.glob("*.jsonl"))
    if not sources:
        print(f"no *.jsonl files in {args.data}", file=sys.stderr)
        return 1
    args.variants = args.variants or nightly_variants()
    print(f"{os.cpu_count()} CPUs; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    header = f"{'size':>9} {'what':<34} {'seconds':>10} {'rows/s':>10} {'RSS MB':>8} {'kind':<5} note"
    print(header)
    print("-" * len(header))
    rows: list[dict[str, Any]] = []
    encoder_rate = args.encoder_rate
    if "encoder" in args.parts:
        r = _child(["--child", "encoder", "--n", str(args.encode_texts), "--data", str(args.data)])
        encoder_rate = r["rows"] / r["seconds"]
        rows.append(_row(r["rows"], f"MiniLM encode ({r['encoder']})", r["seconds"], r["rows"], r["peak_rss_mb"],
                         "meas", f"PATENTML_ENCODER_RUNTIME={os.environ.get('PATENTML_ENCODER_RUNTIME', '(onnx)')}"))
        _print(rows[-1])
    if "variants" in args.parts:
        rows += part_variants(args.train_sizes, args.project_sizes, args.data, args.glove_epochs, args.variants,
                              encoder_rate)
    if {"db", "evalwrite"} & set(args.parts):
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp, \
                ingest_bench.admin_database(Path(tmp)) as (admin, _):
            if "db" in args.parts:
                rows += part_db(admin, sources, args.db_scales, Path(tmp), args.scheme)
            if "evalwrite" in args.parts:
                rows += part_evalwrite(admin, args.eval_patents, args.data)
    print(f"load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
