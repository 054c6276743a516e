"""Encoder speed on CPU: the packaged MiniLM over the same real abstracts in every configuration, interleaved.

Issue 13's target: champion prediction >= 3x a plain fp32 MiniLM pass over the same 600 abstracts. The
champion (kNN and MLP heads on the same MiniLM vectors) costs about one encoder pass plus small heads,
so the encoder's own speed-up below bounds what the champion can reach.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/encoder.py                 # 600 abstracts, 2 rounds
    PYTHONPATH=$PWD .venv/bin/python benchmarks/encoder.py --only a,d --rounds 3
    PYTHONPATH=$PWD .venv/bin/python benchmarks/encoder.py --only a,c --champion DIR   # + the whole champion

``--champion DIR`` adds row (p): that model folder's ``Predictor.scores`` over the same texts (the
vector memo emptied before each pass, so each pass encodes), as ``patentml predict`` scores after loading.

(a) is the reference: torch fp32, batches of 32 in file order, each padded to its longest row. Every
other row is timed in the same process over the same texts, the configurations interleaved in each
round (shuffled order), so load from other processes hits them alike; the table gives the median and
best round. Cosine: of each configuration's vectors to (a)'s, mean and minimum over the abstracts.
ONNX graphs are exported and quantised once into --cache (not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
TARGET = 3.0


def sample(n: int, seed: int = 13) -> tuple[list[str], list[str]]:
    """(``n`` abstracts drawn at random from the shared files, every abstract there)."""
    texts = []
    for path in sorted(SHARED.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            texts += [a for a in (json.loads(line).get("abstract") for line in fh) if isinstance(a, str) and a.strip()]
    if not texts:
        raise SystemExit(f"no abstracts in {SHARED}")
    return random.Random(seed).sample(texts, min(n, len(texts))), texts


def length_table(tokenizer: Any, texts: Sequence[str]) -> str:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # untruncated lengths: its warning about the model's limit is expected
    lengths = np.array([len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]])
    cuts = " ".join(f"p{q}={int(np.percentile(lengths, q))}" for q in (50, 90, 95, 99))
    over = " ".join(f">{c}: {np.mean(lengths > c):.1%}" for c in (128, 256, 512))
    return (f"word pieces per abstract ({len(texts):,} abstracts): mean {lengths.mean():.0f}, {cuts}, "
            f"max {lengths.max()}; {over}")


class FileOrder:
    """(a): SentenceEncoder's pooling on batches in file order (what a plain loop over a file does)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            bs = self.encoder.batch_size
            return np.concatenate([self.encoder.pool(texts[s : s + bs]).numpy() for s in range(0, len(texts), bs)])


class Champion:
    """(p): a whole model's scores through Predictor, as ``patentml predict`` computes them after loading."""

    def __init__(self, folder: Path) -> None:
        from patentml.predict import Predictor

        self.predictor = Predictor(folder)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from patentml.sentence import forget_recent

        forget_recent()  # every pass encodes, as a fresh process would
        return self.predictor.scores(list(texts))


class Workers:
    """Several single-threaded encoders, each on a strided share of the texts (as predict.py scores)."""

    def __init__(self, encoders: Sequence[Any]) -> None:
        self.encoders = list(encoders)
        self.pool = ThreadPoolExecutor(len(self.encoders))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        n = len(self.encoders)
        out = np.zeros((len(texts), self.encoders[0].dim), dtype=np.float32)
        parts = [list(texts[i::n]) for i in range(n)]
        for i, vectors in enumerate(self.pool.map(lambda a: a[0].encode(a[1]), zip(self.encoders, parts))):
            out[i::n] = vectors
        return out


def torch_int8(encoder: Any) -> Any:
    """SentenceEncoder with torch's own dynamic int8 Linear layers (deprecated in torch 2.13, measured anyway)."""
    import copy
    import warnings

    import torch

    quantised = copy.copy(encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantised.model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder.model), {torch.nn.Linear},
                                                                 dtype=torch.qint8)
    return quantised


def configurations(cache: Path, threads: int, batch: int, max_length: int) -> dict[str, tuple[str, Callable[[], Any]]]:
    from patentml.fastencoder import FFN_OUTPUT, FastEncoder, Int8Recipe
    from patentml.sentence import SentenceEncoder

    def onnx(**kw: Any) -> Callable[[], Any]:
        settings = {"max_length": max_length, "batch_size": batch, "threads": threads, **kw}
        return lambda: FastEncoder(None, cache_dir=cache, **settings)

    return {
        "a": ("torch fp32, file order (reference)", lambda: FileOrder(SentenceEncoder(None, max_length, batch))),
        "b": ("torch fp32, bucketed (SentenceEncoder.encode)", lambda: SentenceEncoder(None, max_length, batch)),
        "b2": ("torch fp32, token-length buckets (FastEncoder)", onnx(runtime="torch", precision="fp32")),
        "b3": ("torch dynamic int8, bucketed", lambda: torch_int8(SentenceEncoder(None, max_length, batch))),
        "c": ("ONNX fp32, bucketed", onnx(precision="fp32")),
        "d": ("ONNX int8 per-channel, bucketed (default)", onnx()),
        "d1": ("ONNX int8 per-tensor", onnx(recipe=Int8Recipe(per_channel=False))),
        "d2": ("ONNX int8 per-channel, FFN output fp32", onnx(recipe=Int8Recipe(exclude=FFN_OUTPUT))),
        "d3": ("ONNX int8 per-channel, ORT transformer fusions", onnx(recipe=Int8Recipe(fuse=True))),
        "d4": ("ONNX int8, no thread spinning", onnx(spinning=False)),
        "d5": ("ONNX int8, 2 workers x 1 thread", lambda: Workers([onnx(threads=1)() for _ in range(2)])),
        "d6": ("ONNX int8, batches of 8", onnx(batch_size=8)),
        "d9": ("ONNX int8, batches of 1 (no padding)", onnx(batch_size=1)),
        "d7": ("ONNX int8, batches of 128", onnx(batch_size=128)),
        "d8": ("ONNX int8, max_length 128", onnx(max_length=128)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="abstracts per pass")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", help="comma-separated configuration ids (a is always run)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--champion", type=Path, help="a model folder to time whole, as row (p)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/patentml-bench-onnx"), help="ONNX cache folder")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    texts, every = sample(args.n)
    configs = configurations(args.cache, args.threads, args.batch, args.max_length)
    if args.champion:
        configs["p"] = (f"champion {args.champion.name} (Predictor)", lambda: Champion(args.champion))
    wanted = ["a", *[c for c in (args.only.split(",") if args.only else configs) if c not in ("a", "p")]]
    wanted += ["p"] if args.champion else []
    unknown = set(wanted) - set(configs)
    if unknown:
        raise SystemExit(f"unknown configurations {sorted(unknown)}; known: {', '.join(configs)}")
    encoders = {}
    for cid in wanted:
        started = time.perf_counter()
        encoders[cid] = configs[cid][1]()
        encoders[cid].encode(texts[:8])  # warm-up: first-call allocations, not part of the timing
        print(f"{cid}: ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(length_table(encoders["a"].encoder.tokenizer, every))
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {cid: [] for cid in wanted}
    vectors: dict[str, np.ndarray] = {}
    order = list(wanted)
    for r in range(args.rounds):
        random.Random(r).shuffle(order)
        for cid in order:
            started = time.perf_counter()
            vectors[cid] = encoders[cid].encode(texts)
            seconds[cid].append(time.perf_counter() - started)
        rates = ", ".join(f"{c} {len(texts) / seconds[c][-1]:.1f}/s" for c in wanted)
        print(f"round {r + 1}: {rates}", file=sys.stderr)
    load_after = os.getloadavg()
    ref = vectors["a"]
    base = len(texts) / statistics.median(seconds["a"])
    print(f"\n{len(texts)} abstracts, {args.rounds} rounds interleaved, {args.threads} threads, batches of "
          f"{args.batch}, max_length {args.max_length}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after on {os.cpu_count()} cores\n")
    print("| id | configuration | abstracts/s (median) | best | x (a) | cosine to (a) mean | min | cosine to (d) min |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")

    def to_d(cid: str) -> str:
        # int8 activations are quantised per batch: the same text in other company gets another vector.
        return f"{(vectors[cid] * vectors['d']).sum(axis=1).min():.4f}" if "d" in vectors else "-"

    for cid in wanted:
        rate = len(texts) / statistics.median(seconds[cid])
        if cid == "p":  # scores, not vectors
            print(f"| p | {configs['p'][0]} | {rate:.1f} | {len(texts) / min(seconds['p']):.1f} | {rate / base:.2f} "
                  f"| - | - | - |")
            continue
        cosine = (vectors[cid] * ref).sum(axis=1)
        print(f"| {cid} | {configs[cid][0]} | {rate:.1f} | {len(texts) / min(seconds[cid]):.1f} | {rate / base:.2f} | "
              f"{cosine.mean():.4f} | {cosine.min():.4f} | {to_d(cid)} |")
    best = min((c for c in wanted if c not in ("a", "p")), key=lambda c: statistics.median(seconds[c]), default="a")
    print(f"\ntarget: champion prediction >= {TARGET:.1f}x (a); the fastest encoder here, {best}, is "
          f"{statistics.median(seconds['a']) / statistics.median(seconds[best]):.2f}x (a) on its own")
    if args.champion:
        print(f"champion (p): {statistics.median(seconds['a']) / statistics.median(seconds['p']):.2f}x (a), "
              f"target {TARGET:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
