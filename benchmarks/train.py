"""Training and inference speed of the paper's GloVe+CNN on this machine, next to its measured GEMM rate.

Prints: training patents/s; FLOPs of one training step counted from the shapes, divided by the
step time, as a share of a matrix-multiply rate measured in the same run (target >= 30 %);
inference patents/s; peak memory; what per-batch padding with length bucketing saves over fixed
250-token padding; and the cost of frozen BERT+CNN relative to GloVe+CNN per epoch and in total
including the one-off encoding pass (the paper reports 60x).

    python benchmarks/train.py [--data ../shared/data/uspto-cpc-random.jsonl] [--docs 3000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from patentml.nn.cnn import CNNConfig, PaperCNN
from patentml.text import MAX_TOKENS, Vocabulary, length_bucketed_batches, tokenize

ROOT = Path(__file__).resolve().parent.parent


def load_texts(path: Path, n: int) -> tuple[list[str], list[list[str]]]:
    texts, labels = [], []
    if path.exists():
        with path.open() as fh:
            for line in fh:
                if line.strip():
                    r = json.loads(line)
                    texts.append(r["abstract"])
                    labels.append(r["labels"])
                if len(texts) >= n:
                    break
    else:  # synthetic fallback: abstract-like lengths (mean ~110 words)
        rng = np.random.default_rng(0)
        words = [f"w{i}" for i in range(5000)]
        for _ in range(n):
            texts.append(" ".join(rng.choice(words, size=int(rng.gamma(6, 18)))))
            labels.append([f"A{rng.integers(10, 99)}B"])
    return texts, labels


def gemm_rate(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Best-of FP32 matmul rate (FLOP/s) of this machine with torch's BLAS."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def step_flops(c: CNNConfig, batch: int, seq: int) -> float:
    """FLOPs of one training step (forward + backward = 3x forward for each layer that trains).

    Convolution over a (batch, dim, seq) input with F filters of width k: 2*B*(seq-k+1)*k*dim*F.
    Dense layers: 2*B*in*out. The backward pass costs two forwards (input and weight gradients).
    Embedding lookups, pooling, batch norm and the loss are memory-bound and not counted.
    """
    conv = sum(2 * batch * max(seq - k + 1, 1) * k * c.embed_dim * c.num_filters for k in c.kernel_sizes)
    dense = 2 * batch * (len(c.kernel_sizes) * c.num_filters * c.hidden + c.hidden * c.num_labels)
    return 3.0 * (conv + dense)


def run_epoch(model: PaperCNN, ids: list[list[int]], y: torch.Tensor, batch: int, fixed: bool, seed: int = 0
              ) -> tuple[float, float]:
    """One training epoch; returns (seconds, counted FLOPs)."""
    from patentml.losses import make_loss

    loss_fn = make_loss("wbce", 2.0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    lengths = [len(i) for i in ids]
    batches = ([list(range(i, min(i + batch, len(ids)))) for i in range(0, len(ids), batch)] if fixed
               else length_bucketed_batches(lengths, batch, shuffle=True, seed=seed))
    flops = 0.0
    model.train()
    started = time.perf_counter()
    for rows in batches:
        if len(rows) < 2:
            continue
        width = MAX_TOKENS if fixed else max(max(lengths[r] for r in rows), 5)
        x = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : lengths[r]] = torch.as_tensor(ids[r])
        lens = torch.tensor([lengths[r] for r in rows])
        loss = loss_fn(model(x, lens), y[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        flops += step_flops(model.config, len(rows), width)
    return time.perf_counter() - started, flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "uspto-cpc-random.jsonl")
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-bert", action="store_true")
    args = ap.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    texts, labels = load_texts(args.data, args.docs)
    names = sorted({l for ls in labels for l in ls})
    index = {l: i for i, l in enumerate(names)}
    y = torch.zeros(len(texts), len(names))
    for i, ls in enumerate(labels):
        y[i, [index[l] for l in ls]] = 1.0
    vocab = Vocabulary.build(tokenize(t, MAX_TOKENS) for t in texts)
    ids = [vocab.encode_text(t) or [1] for t in texts]
    from patentml.embeddings import glove_matrix

    vectors, known = glove_matrix(vocab.tokens)
    torch.manual_seed(0)
    model = PaperCNN.from_pretrained(vectors, known, len(names))  # paper sizes: 512 filters, dense 512
    rate = gemm_rate(threads)
    torch.set_num_threads(threads)
    mean_len = statistics.mean(len(i) for i in ids)
    print(f"machine: {threads} threads, FP32 GEMM {rate / 1e9:.1f} GFLOP/s (2048^3 matmul, best of 5)")
    print(f"data: {len(texts)} abstracts from {args.data.name if args.data.exists() else 'synthetic'}, "
          f"{len(names)} labels, mean {mean_len:.0f} tokens, vocab {len(vocab)} ({known.mean():.0%} in GloVe), "
          f"model {model.count_parameters():,} params")

    run_epoch(model, ids[:256], y[:256], args.batch_size, fixed=False)  # warm-up
    secs, flops = run_epoch(model, ids, y, args.batch_size, fixed=False)
    secs_fixed, flops_fixed = run_epoch(model, ids, y, args.batch_size, fixed=True)
    achieved = flops / secs
    print("\n| measure | value | target |\n|---|---:|---|")
    print(f"| glove-wbce training, per-batch padding + length buckets | {len(ids) / secs:,.0f} patents/s | |")
    print(f"| same, fixed padding to 250 | {len(ids) / secs_fixed:,.0f} patents/s | |")
    print(f"| padding gain (time fixed-250 / time bucketed) | {secs_fixed / secs:.2f}x | |")
    print(f"| training step FLOP rate | {achieved / 1e9:.1f} GFLOP/s | |")
    print(f"| share of measured GEMM rate | {achieved / rate:.0%} | >= 30 % |")
    print(f"| fixed-250 FLOP rate share (wasted work included) | {flops_fixed / secs_fixed / rate:.0%} | |")

    model.eval()
    order = np.argsort([len(i) for i in ids])
    started = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), 256):
            rows = order[s : s + 256]
            width = max(max(len(ids[r]) for r in rows), 5)
            x = torch.zeros(len(rows), width, dtype=torch.long)
            for i, r in enumerate(rows):
                x[i, : len(ids[r])] = torch.as_tensor(ids[r])
            torch.sigmoid(model(x, torch.tensor([len(ids[r]) for r in rows])))
    infer = time.perf_counter() - started
    print(f"| glove inference | {len(ids) / infer:,.0f} patents/s | |")

    if not args.skip_bert:
        from patentml.embeddings import load_encoder

        tokenizer, encoder = load_encoder(None)
        n_bert = min(len(texts), 1000)
        started = time.perf_counter()
        enc = tokenizer(texts[:n_bert], truncation=True, max_length=MAX_TOKENS)["input_ids"]
        hidden = []
        with torch.inference_mode():
            border = np.argsort([len(e) for e in enc])
            for s in range(0, n_bert, 32):
                rows = border[s : s + 32]
                width = max(len(enc[r]) for r in rows)
                x = torch.zeros(len(rows), width, dtype=torch.long)
                mask = torch.zeros(len(rows), width, dtype=torch.long)
                for i, r in enumerate(rows):
                    x[i, : len(enc[r])] = torch.as_tensor(enc[r])
                    mask[i, : len(enc[r])] = 1
                h = encoder(input_ids=x, attention_mask=mask).last_hidden_state
                hidden.extend(h[i, : len(enc[r])].to(torch.float16) for i, r in enumerate(rows))
        encode_per_doc = (time.perf_counter() - started) / n_bert
        bert = PaperCNN(CNNConfig(vocab_size=0, embed_dim=encoder.config.hidden_size, num_labels=len(names),
                                  input_mode="vectors"))
        from patentml.losses import make_loss

        loss_fn = make_loss("wbce", 2.0)
        opt = torch.optim.Adam(bert.parameters(), lr=1e-3)
        bert.train()
        n_b = min(n_bert, 512)
        batches = length_bucketed_batches([len(h) for h in hidden[:n_b]], args.batch_size, seed=0)
        started = time.perf_counter()
        for rows in batches:
            width = max(max(len(hidden[r]) for r in rows), 5)
            x = torch.zeros(len(rows), width, hidden[0].shape[1])
            for i, r in enumerate(rows):
                x[i, : len(hidden[r])] = hidden[r].float()
            loss = loss_fn(bert(x, torch.tensor([len(hidden[r]) for r in rows])), y[[int(border[r]) for r in rows]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        bert_epoch_per_doc = (time.perf_counter() - started) / n_b
        glove_per_doc = secs / len(ids)
        epochs = 10
        total_ratio = (encode_per_doc + epochs * bert_epoch_per_doc) / (epochs * glove_per_doc)
        print(f"| frozen BERT encoding pass (once per snapshot) | {1 / encode_per_doc:,.0f} patents/s | |")
        print(f"| bert+cnn epoch cost / glove+cnn epoch cost | {bert_epoch_per_doc / glove_per_doc:.1f}x | paper: 60x |")
        print(f"| bert total / glove total, {epochs} epochs incl. encoding | {total_ratio:.1f}x | well under 10x |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| peak memory (max RSS) | {peak:,.0f} MB | |")


if __name__ == "__main__":
    main()
