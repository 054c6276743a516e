"""Issue 13's int8 quality gate: embed-knn and embed-linear validation F1 and P@1 on fp32 vs int8 vectors.

int8 is adopted only when validation example F1 stays within 0.3 points of fp32. Both backends are the
real ones; their vectors come from a fixed cache (the EmbeddingCache interface), so each run sees
exactly the vectors of one configuration. Vectors are encoded once per configuration and split and
kept as .npy files in --vectors (14k abstracts take about 10 minutes per fp32 pass on 2 cores).

    PATENTML_HOME=/tmp/me/home patentml ingest ../shared/data/*.jsonl && patentml splits rebuild
    PATENTML_HOME=/tmp/me/home PYTHONPATH=$PWD .venv/bin/python benchmarks/encoder_quality.py \\
        --vectors /tmp/me/vec --configs fp32,int8pc,int8pcffn --seeds 0,1,2

Each row trains on the vectors of ``memory`` (train, and validation for its choices) and scores
validation with the vectors of ``queries``: fp32 memory with int8 queries is a model trained before
int8 was switched on, predicting with it. F1 is
example F1 with the top label kept at the best global threshold, chosen on the rows it is reported for;
"CPC" is the part of validation whose labels are CPC (snapshot_members.label_scheme).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: Configuration name -> how it encodes (None: the production SentenceEncoder in fp32).
RECIPES = {"fp32": None, "int8pc": {}, "int8pcffn": {"exclude": "ffn"}, "int8pt": {"per_channel": False}}


class FixedVectors:
    """An EmbeddingCache that serves given vectors by text hash, whatever the encoder key."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        from patentml.sentence import text_hash

        self.vectors = {text_hash(t): v for t, v in zip(texts, vectors)}

    def get_many(self, encoder_key: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        return {h: self.vectors[h] for h in hashes if h in self.vectors}

    def put_many(self, encoder_key: str, vectors: dict[str, np.ndarray]) -> None:
        raise AssertionError(f"{len(vectors)} texts were encoded although every vector was given")


def vectors_for(name: str, split: str, texts: list[str], folder: Path, limit: int | None = None) -> np.ndarray:
    """The split's vectors from ``<name>_<split>.npy`` (its first ``limit`` rows when set), encoded when absent."""
    path = folder / f"{name}_{split}.npy"
    if limit is not None and not path.is_file():
        path = folder / f"{name}_{split}{limit}.npy"
    if path.is_file():
        v = np.load(path)
        if len(v) < len(texts) or (limit is None and len(v) != len(texts)):
            raise SystemExit(f"{path} has {len(v)} rows for {len(texts)} {split} abstracts: another snapshot?")
        return v[: len(texts)]
    started = time.perf_counter()
    if RECIPES[name] is None:
        from patentml.sentence import SentenceEncoder

        v = SentenceEncoder(None, 256).encode(texts, progress=True)
    else:
        from patentml.fastencoder import FFN_OUTPUT, FastEncoder, Int8Recipe

        kw = dict(RECIPES[name])
        if kw.get("exclude") == "ffn":
            kw["exclude"] = FFN_OUTPUT
        v = FastEncoder(None, 256, recipe=Int8Recipe(**kw)).encode(texts, progress=True)
    print(f"{name} {split}: {len(texts)} abstracts encoded in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(path, v)
    return v


def scores_of(backend_cls: Any, labels: list[str], train: list, valid: list, memory: FixedVectors,
              queries: FixedVectors, seed: int) -> np.ndarray:
    from patentml.variants.base import FitContext
    from patentml.sentence import forget_recent

    forget_recent()  # the in-process memo is keyed by encoder key, which every configuration shares here
    backend = backend_cls(labels)
    with tempfile.TemporaryDirectory() as work:
        backend.fit(train, valid, FitContext(work_dir=Path(work), seed=seed, embedding_cache=memory))
    forget_recent()
    backend.embedding_cache = queries
    return backend.predict_scores([t for _, t, _ in valid])


def metrics(truth: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    from patentml.metrics import at_k, choose_threshold

    ranked = at_k(truth, scores, ks=(1, 5))
    return choose_threshold(truth, scores, keep_top=True)[1], ranked["p@1"], ranked["r@5"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=Path, required=True, help="folder of <config>_<split>.npy files")
    ap.add_argument("--configs", default="fp32,int8pc", help=f"from {', '.join(RECIPES)}; the first is the reference")
    ap.add_argument("--mixed", action="store_true", help="also fp32 memory with each int8 configuration's queries")
    ap.add_argument("--seeds", default="0", help="embed-linear seeds (kNN has no randomness)")
    ap.add_argument("--backends", default="embed-knn,embed-linear")
    ap.add_argument("--train-limit", type=int, help="train on the first N train patents only (cost)")
    ap.add_argument("--pairs", help="memory:queries runs instead, e.g. fp32:fp32,fp32:int8pc (no int8 train pass)")
    ap.add_argument("--within-valid", action="store_true",
                    help="cheapest gate: two folds of validation (odd/even rows), each the other's memory")
    args = ap.parse_args(argv)

    from sqlalchemy import text

    from patentml.db.engine import get_engine
    from patentml.settings import get_settings
    from patentml.splits import iter_split, label_space, latest_snapshot
    from patentml.labels import multi_hot
    from patentml.variants.embed import EmbedKNN, EmbedLinear

    engine = get_engine(get_settings())
    sid = latest_snapshot(engine)
    labels = label_space(engine, sid, "full")
    train = list(iter_split(engine, sid, "full", "train"))
    train = train[: args.train_limit] if args.train_limit else train
    valid = list(iter_split(engine, sid, "full", "valid"))
    with engine.connect() as conn:
        scheme = dict(conn.execute(text("SELECT patent_id, label_scheme FROM snapshot_members "
                                        "WHERE snapshot_id = :s AND split = 'valid'"), {"s": sid}).all())
    cpc = np.array([scheme[pid] == "CPC" for pid, _, _ in valid])
    truth = multi_hot([ls for _, _, ls in valid], labels) > 0
    # (train rows, validation rows) per fold: the splits, or validation's halves each trained on the other.
    halves = [np.arange(0, len(valid), 2), np.arange(1, len(valid), 2)]
    folds = ([(valid, halves[0], halves[1]), (valid, halves[1], halves[0])] if args.within_valid
             else [(train, None, np.arange(len(valid)))])
    configs = args.configs.split(",")
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")] if args.pairs else None
    if pairs:
        configs = list(dict.fromkeys(c for pair in pairs for c in pair))
    caches = {}
    for name in configs:
        texts = {split: [t for _, t, _ in rows] for split, rows in (("train", train), ("valid", valid))}
        parts = [vectors_for(name, "valid", texts["valid"], args.vectors)]
        as_memory = not pairs or any(m == name for m, _ in pairs)
        if not args.within_valid and as_memory:
            parts.insert(0, vectors_for(name, "train", texts["train"], args.vectors, args.train_limit))
        caches[name] = FixedVectors((texts["train"] if not args.within_valid and as_memory else []) + texts["valid"],
                                    np.concatenate(parts))
    ref = configs[0]
    runs = pairs or [(c, c) for c in configs] + ([(ref, c) for c in configs[1:]] if args.mixed else [])
    seeds = [int(s) for s in args.seeds.split(",")]
    backends = {"embed-knn": EmbedKNN, "embed-linear": EmbedLinear}
    print(f"snapshot {sid}: train {len(train):,}, validation {len(valid):,} ({cpc.sum():,} CPC-labelled)"
          + (", two folds of validation" if args.within_valid else "") + "\n")
    print("| backend | memory | queries | runs | F1 all | P@1 all | R@5 all | F1 CPC | P@1 CPC | R@5 CPC |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for bname in args.backends.split(","):
        for memory, queries in runs:
            rows = []
            for (fit_rows, pick, report), seed in itertools.product(folds, seeds if bname == "embed-linear" else [0]):
                fit_on = fit_rows if pick is None else [fit_rows[i] for i in pick]
                s = scores_of(backends[bname], labels, fit_on, [valid[i] for i in report], caches[memory],
                              caches[queries], seed)
                t, c = truth[report], cpc[report]
                rows.append(metrics(t, s) + metrics(t[c], s[c]))
            mean = [statistics.mean(col) for col in zip(*rows)]
            cells = " | ".join(f"{100 * m:.2f}" for m in mean)
            print(f"| {bname} | {memory} | {queries} | {len(rows)} | {cells} |", flush=True)
    print("\ngate: int8 is adopted when its F1 (all and CPC) is within 0.30 points of fp32's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
