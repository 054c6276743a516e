"""Approximate kNN at scale: recall@10 of the HNSW index against exact search, build and query time,
memory and file size, at 14k real MiniLM vectors and at 100k and 320k built from them.

Issue 13: above a size threshold an approximate index, its recall@10 against exact search measured at
320k. 320k abstracts cannot be encoded on this machine, so the memory is built from the real vectors:

    memory  = the 14,040 real train vectors, plus synthetic rows v = unit((1 - u) * a + u * b + e), where
              a is a random real train vector, b one of a's 10 nearest real neighbours, u ~ U(0, 0.5) and
              e ~ N(0, sigma^2) per dimension (sigma = --sigma): mixtures of related real patents, not
              copies; each synthetic row keeps a's TF-IDF row for the hybrid.
    queries = the real validation vectors (never in the memory), the first --queries of them.

The index holds float16 vectors and its graph links in memory, about its file size; exact search holds
the float32 memory and one chunk of similarities (128 MB at most). The table prints the mean similarity
of the queries to their 1st and 10th exact neighbour, so the synthetic memory can be compared with the
real one (denser memories have closer neighbours).

    PATENTML_HOME=/tmp/me/home PYTHONPATH=$PWD .venv/bin/python benchmarks/ann.py --vectors /tmp/me/vec

--vectors holds fp32_train.npy and fp32_valid.npy (benchmarks/encoder_quality.py writes them), rows in
the order of the latest snapshot's splits, which are read for the TF-IDF hybrid.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_RECALL = 0.95
TEXT_WEIGHT = 0.3


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def synthetic(real: np.ndarray, n: int, sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) rows built from ``real`` as the module docstring says, and the real row each started from."""
    from patentml.metrics import top_k

    rng = np.random.default_rng(seed)
    neighbours = np.concatenate([top_k(real[s : s + 1024] @ real.T, 11)[:, 1:] for s in range(0, len(real), 1024)])
    a = rng.integers(0, len(real), n)
    b = neighbours[a, rng.integers(0, 10, n)]
    u = rng.uniform(0.0, 0.5, (n, 1)).astype(np.float32)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for s in range(0, n, 65536):
        rows = slice(s, s + 65536)
        noise = rng.normal(0.0, sigma, (len(a[rows]), real.shape[1])).astype(np.float32)
        out[rows] = unit((1 - u[rows]) * real[a[rows]] + u[rows] * real[b[rows]] + noise)
    return out, a


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def texts_of_snapshot() -> tuple[list[str], list[str]]:
    from patentml.db.engine import get_engine
    from patentml.settings import get_settings
    from patentml.splits import iter_split, latest_snapshot

    engine = get_engine(get_settings())
    sid = latest_snapshot(engine)
    return ([t for _, t, _ in iter_split(engine, sid, "full", "train")],
            [t for _, t, _ in iter_split(engine, sid, "full", "valid")])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=Path, required=True)
    ap.add_argument("--sizes", default="14040,100000,320000", help="memory sizes (the first: the real vectors)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.01)
    ap.add_argument("--no-text", action="store_true", help="skip the TF-IDF hybrid (needs the snapshot)")
    args = ap.parse_args(argv)

    import scipy.sparse as sp

    from patentml.ann import HnswParams, VectorIndex, nearest_rows
    from patentml.variants.embed import EmbedKNN

    real, queries = np.load(args.vectors / "fp32_train.npy"), np.load(args.vectors / "fp32_valid.npy")
    queries = queries[: args.queries]
    text_real = text_q = None
    if not args.no_text:
        from patentml.variants.linear import TfidfFeatures

        train_texts, valid_texts = texts_of_snapshot()
        if len(train_texts) != len(real):
            raise SystemExit(f"{len(train_texts)} train abstracts in the snapshot, {len(real)} vectors: "
                             "another snapshot?")
        features = TfidfFeatures(dict(EmbedKNN.DEFAULTS))
        text_real = sp.csr_matrix(features.fit_transform(train_texts), dtype=np.float32)
        text_q = sp.csr_matrix(features.transform(valid_texts[: args.queries]), dtype=np.float32)
    sizes = [int(s) for s in args.sizes.split(",")]
    extra, source = synthetic(real, max(sizes) - len(real), args.sigma)
    everything = np.concatenate([real, extra])
    origin = np.concatenate([np.arange(len(real)), source])
    del extra
    params = HnswParams()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {len(queries)} real validation queries; "
          f"HNSW m={params.m} ef_construction={params.ef_construction} ef_search={params.ef_search} "
          f"candidates={params.candidates}; synthetic sigma {args.sigma}; hybrid text weight {TEXT_WEIGHT}\n")
    print("| memory | sim@1 | sim@10 | exact s/1k q | build s | ANN s/1k q | recall@10 | hybrid exact s/1k | "
          "hybrid ANN s/1k | hybrid recall@10 | index file MB | exact memory MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        memory = everything[:n]
        exact = VectorIndex.build(memory, threshold=n)
        started = time.perf_counter()
        truth, truth_sims = nearest_rows(queries, exact, 10)
        t_exact = (time.perf_counter() - started) / len(queries) * 1000
        started = time.perf_counter()
        index = VectorIndex.build(memory, threshold=0, params=params)
        t_build = time.perf_counter() - started
        started = time.perf_counter()
        found, _ = nearest_rows(queries, index, 10)
        t_ann = (time.perf_counter() - started) / len(queries) * 1000
        hybrid = ["-", "-", "-"]
        if text_real is not None:
            text_memory = text_real[origin[:n]]
            started = time.perf_counter()
            h_truth, _ = nearest_rows(queries, exact, 10, text_q, text_memory, TEXT_WEIGHT)
            t_h_exact = (time.perf_counter() - started) / len(queries) * 1000
            started = time.perf_counter()
            h_found, _ = nearest_rows(queries, index, 10, text_q, text_memory, TEXT_WEIGHT)
            t_h_ann = (time.perf_counter() - started) / len(queries) * 1000
            hybrid = [f"{t_h_exact:.2f}", f"{t_h_ann:.2f}", f"{recall(h_found, h_truth):.4f}"]
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp) / "ann.safetensors")
            file_mb = (Path(tmp) / "ann.safetensors").stat().st_size / 2**20
            VectorIndex.load(Path(tmp) / "ann.safetensors")
        print(f"| {n:,} | {truth_sims[:, 0].mean():.3f} | {truth_sims[:, -1].mean():.3f} | {t_exact:.2f} | "
              f"{t_build:.1f} | {t_ann:.2f} | {recall(found, truth):.4f} | {' | '.join(hybrid)} | "
              f"{file_mb:.0f} | {memory.nbytes / 2**20:.0f} |", flush=True)
        del index, exact
    print(f"\ntarget: recall@10 >= {TARGET_RECALL} at 320k (the issue sets none; this is ours); load average "
          f"{os.getloadavg()[0]:.2f} at the end", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
