"""Frozen sentence embeddings (mean-pooled, normalised BERT-family vectors) + a linear or small MLP head.

Embeddings are cached by the hash of the text they encode (in Postgres when training runs with a
database), so a nightly run encodes only new or changed patents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from patentml.artifact import load_arrays, save_arrays
from patentml.exceptions import ConfigError
from patentml.variants.base import Backend, Corpus, EpochLog, FitContext, collect, label_matrix

log = logging.getLogger(__name__)

WEIGHTS_FILE = "head.safetensors"
ENCODER_DIR = "encoder"


class EmbeddingCache(Protocol):
    """Vectors by (encoder key, text hash); implemented on Postgres in patentml.embedcache."""

    def get_many(self, encoder_key: str, hashes: Sequence[str]) -> dict[str, np.ndarray]: ...

    def put_many(self, encoder_key: str, vectors: dict[str, np.ndarray]) -> None: ...


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class SentenceEncoder:
    """Mean-pooled, L2-normalised last-layer vectors of a BERT-family encoder (sentence-transformers style)."""

    def __init__(self, name_or_path: str | None, max_length: int, batch_size: int = 32) -> None:
        from patentml.embeddings import load_encoder, resolve_encoder

        self.source = resolve_encoder(name_or_path)
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer, self.model = load_encoder(name_or_path)
        self.dim = int(self.model.config.hidden_size)

    @property
    def key(self) -> str:
        """Identifies the vectors: the encoder (by its config and name) and the length cap."""
        config = json.dumps(self.model.config.to_dict(), sort_keys=True, default=str)
        name = Path(self.source).name if Path(self.source).is_dir() else self.source
        return f"{name}:{self.max_length}:{hashlib.sha256(config.encode()).hexdigest()[:12]}"

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in tqdm(range(0, len(order), self.batch_size), disable=not progress, desc="embed", unit=" batch",
                          mininterval=1):
            rows = order[start : start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_length,
                                 padding=True, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state  # (batch, seq, dim)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (batch, dim)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


def embed_corpus(encoder: SentenceEncoder, texts: Sequence[str], cache: EmbeddingCache | None,
                 progress: bool = False) -> tuple[np.ndarray, int]:
    """Vectors for ``texts``, encoding only those the cache lacks; returns (vectors, number encoded)."""
    hashes = [text_hash(t) for t in texts]
    found = cache.get_many(encoder.key, hashes) if cache is not None else {}
    missing = [i for i, h in enumerate(hashes) if h not in found]
    vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for i, h in enumerate(hashes):
        if h in found:
            vectors[i] = found[h]
    if missing:
        new = encoder.encode([texts[i] for i in missing], progress=progress)
        vectors[missing] = new
        if cache is not None:
            cache.put_many(encoder.key, {hashes[i]: new[k] for k, i in enumerate(missing)})
    return vectors, len(missing)


class Head(nn.Module):
    """Linear (one logistic regression per label, trained jointly) or one hidden layer."""

    def __init__(self, dim: int, n_labels: int, hidden: int, dropout: float) -> None:
        super().__init__()
        if hidden:
            self.net: nn.Module = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(),
                                                nn.Dropout(dropout), nn.Linear(hidden, n_labels))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (batch, labels) logits


class EmbedLinear(Backend):
    """Sentence embeddings + head; the strong cheap peer of the paper's CNNs."""

    name = "embed-linear"
    DEFAULTS: dict[str, Any] = {
        "bert_model": None,
        "max_length": 256,
        "encode_batch_size": 32,
        #: 0 = linear head; > 0 = one hidden layer of this size.
        "hidden": 0,
        "dropout": 0.1,
        "epochs": 60,
        "batch_size": 128,
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "loss": "bce",
        "alpha": 2.0,
        "patience": 8,
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        self.encoder: SentenceEncoder | None = None
        self.head: Head | None = None

    def _encoder(self) -> SentenceEncoder:
        if self.encoder is None:
            self.encoder = SentenceEncoder(self.params["bert_model"], int(self.params["max_length"]),
                                           int(self.params["encode_batch_size"]))
        return self.encoder

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        from patentml.losses import make_loss
        from patentml.metrics import at_k, choose_threshold

        p = self.params
        encoder = self._encoder()
        data = {}
        for name, corpus in (("train", train), ("valid", valid)):
            _, texts, labels = collect(corpus)
            started = time.perf_counter()
            x, n_new = embed_corpus(encoder, texts, ctx.embedding_cache, ctx.progress)
            log.info("%s: %d embeddings, %d encoded now (%.1f s), %d from the cache", name, len(texts), n_new,
                     time.perf_counter() - started, len(texts) - n_new)
            data[name] = (torch.from_numpy(x), torch.from_numpy(label_matrix(labels, self.labels)))
        xt, yt = data["train"]
        xv, yv = data["valid"]
        torch.manual_seed(ctx.seed)
        head = Head(encoder.dim, len(self.labels), int(p["hidden"]), float(p["dropout"]))
        loss_fn = make_loss(p["loss"], float(p["alpha"]))
        opt = torch.optim.AdamW(head.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        best, best_state, bad = -1.0, None, 0
        bs = int(p["batch_size"])
        gen = torch.Generator().manual_seed(ctx.seed)
        for epoch in range(1, int(p["epochs"]) + 1):
            started = time.perf_counter()
            head.train()
            perm = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for s in range(0, len(perm), bs):
                rows = perm[s : s + bs]
                loss = loss_fn(head(xt[rows]), yt[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(rows)
            head.eval()
            with torch.no_grad():
                logits = head(xv)
                valid_loss = float(loss_fn(logits, yv))
                scores = torch.sigmoid(logits).numpy()
            truth = yv.numpy() > 0
            _, f1 = choose_threshold(truth, scores, keep_top=True) if len(truth) else (0.5, 0.0)
            p1 = at_k(truth, scores, ks=(1,))["p@1"] if len(truth) else 0.0
            ctx.on_epoch(EpochLog(epoch, total / len(xt), valid_loss, f1, p1, time.perf_counter() - started,
                                  len(xt) / max(time.perf_counter() - started, 1e-9)))
            if f1 > best + 1e-6:
                best, bad = f1, 0
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            else:
                bad += 1
                if bad >= int(p["patience"]):
                    break
        if best_state is not None:
            head.load_state_dict(best_state)
        self.head = head.eval()

    def predict_scores(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        assert self.head is not None, "fit or load the model first"
        x = self._encoder().encode(list(texts))
        with torch.inference_mode():
            return torch.sigmoid(self.head(torch.from_numpy(x))).numpy()

    def n_params(self) -> int:
        return 0 if self.head is None else sum(q.numel() for q in self.head.parameters())

    def _save(self, folder: Path) -> None:
        assert self.head is not None
        save_arrays(folder / WEIGHTS_FILE, {k: v.detach().cpu().numpy() for k, v in self.head.state_dict().items()})
        self._encoder().tokenizer.save_pretrained(folder / ENCODER_DIR)

    def _load(self, folder: Path) -> None:
        weights = load_arrays(folder / WEIGHTS_FILE)
        first = weights["net.1.weight"]
        dim = first.shape[1]
        head = Head(dim, len(self.labels), int(self.params["hidden"]), float(self.params["dropout"]))
        head.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        if head.net[-1].out_features != len(self.labels):  # type: ignore[index]
            raise ConfigError(f"{folder}: head has {head.net[-1].out_features} outputs for {len(self.labels)} labels")  # type: ignore[index]
        self.head = head.eval()
