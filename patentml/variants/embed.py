"""Frozen sentence embeddings (mean-pooled, normalised BERT-family vectors) + a linear or small MLP head.

Embeddings are cached by the hash of the text they encode (in Postgres when training runs with a
database), so a nightly run encodes only new or changed patents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
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


#: Vectors computed in this process, by (encoder key, text hash): the members of an ensemble that share
#: an encoder encode each text once. Bounded; the oldest entries leave first.
_RECENT: "OrderedDict[tuple[str, str], np.ndarray]" = OrderedDict()
RECENT_MAX = 50_000


def embed_corpus(encoder: SentenceEncoder, texts: Sequence[str], cache: EmbeddingCache | None,
                 progress: bool = False) -> tuple[np.ndarray, int]:
    """Vectors for ``texts``, encoding only those neither this process nor the cache has; returns
    (vectors, number encoded)."""
    key = encoder.key
    hashes = [text_hash(t) for t in texts]
    found = {h: _RECENT[(key, h)] for h in hashes if (key, h) in _RECENT}
    wanted = [h for h in dict.fromkeys(hashes) if h not in found]
    if cache is not None and wanted:
        found.update(cache.get_many(key, wanted))
    missing = [i for i, h in enumerate(hashes) if h not in found]
    vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for i, h in enumerate(hashes):
        if h in found:
            vectors[i] = found[h]
    if missing:
        new = encoder.encode([texts[i] for i in missing], progress=progress)
        vectors[missing] = new
        if cache is not None:
            cache.put_many(key, {hashes[i]: new[k] for k, i in enumerate(missing)})
    for h, v in zip(hashes, vectors):
        _RECENT[(key, h)] = v
        _RECENT.move_to_end((key, h))
    while len(_RECENT) > RECENT_MAX:
        _RECENT.popitem(last=False)
    return vectors, len(missing)


class EmbeddingBackend(Backend):
    """Shared by the backends on frozen sentence embeddings: the encoder, its settings and its files."""

    ENCODER_DEFAULTS: dict[str, Any] = {
        "bert_model": None,
        "max_length": 256,
        "encode_batch_size": 32,
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        self.encoder: SentenceEncoder | None = None

    def _encoder(self) -> SentenceEncoder:
        if self.encoder is None:
            self.encoder = SentenceEncoder(self.params["bert_model"], int(self.params["max_length"]),
                                           int(self.params["encode_batch_size"]))
        return self.encoder

    def _embed_splits(self, train: Corpus, valid: Corpus,
                      ctx: FitContext) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(vectors, multi-hot labels) of both splits, from the cache where it has them."""
        data = {}
        for name, corpus in (("train", train), ("valid", valid)):
            _, texts, labels = collect(corpus)
            started = time.perf_counter()
            x, n_new = embed_corpus(self._encoder(), texts, ctx.embedding_cache, ctx.progress)
            log.info("%s: %d embeddings, %d encoded now (%.1f s), %d from the cache", name, len(texts), n_new,
                     time.perf_counter() - started, len(texts) - n_new)
            data[name] = (x, label_matrix(labels, self.labels))
        return data

    def _vectors(self, texts: Sequence[str]) -> np.ndarray:
        return embed_corpus(self._encoder(), list(texts), self.embedding_cache)[0]

    def _save_encoder(self, folder: Path) -> None:
        self._encoder().tokenizer.save_pretrained(folder / ENCODER_DIR)


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


class EmbedLinear(EmbeddingBackend):
    """Sentence embeddings + head; the strong cheap peer of the paper's CNNs."""

    name = "embed-linear"
    DEFAULTS: dict[str, Any] = {
        **EmbeddingBackend.ENCODER_DEFAULTS,
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
        self.head: Head | None = None

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        from patentml.losses import make_loss
        from patentml.metrics import at_k, choose_threshold

        p = self.params
        data = self._embed_splits(train, valid, ctx)
        xt, yt = (torch.from_numpy(a) for a in data["train"])
        xv, yv = (torch.from_numpy(a) for a in data["valid"])
        torch.manual_seed(ctx.seed)
        head = Head(xt.shape[1], len(self.labels), int(p["hidden"]), float(p["dropout"]))
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
        x = self._vectors(texts)
        with torch.inference_mode():
            return torch.sigmoid(self.head(torch.from_numpy(x))).numpy()

    def n_params(self) -> int:
        return 0 if self.head is None else sum(q.numel() for q in self.head.parameters())

    def _save(self, folder: Path) -> None:
        assert self.head is not None
        save_arrays(folder / WEIGHTS_FILE, {k: v.detach().cpu().numpy() for k, v in self.head.state_dict().items()})
        self._save_encoder(folder)

    def _load(self, folder: Path) -> None:
        weights = load_arrays(folder / WEIGHTS_FILE)
        first = weights["net.1.weight"]
        dim = first.shape[1]
        head = Head(dim, len(self.labels), int(self.params["hidden"]), float(self.params["dropout"]))
        head.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        if head.net[-1].out_features != len(self.labels):  # type: ignore[index]
            raise ConfigError(f"{folder}: head has {head.net[-1].out_features} outputs for {len(self.labels)} labels")  # type: ignore[index]
        self.head = head.eval()


KNN_FILE = "neighbours.safetensors"


def knn_scores(x: np.ndarray, memory: np.ndarray, memory_labels: Any, k: int, power: float,
               chunk: int = 1024) -> np.ndarray:
    """Label scores (n, labels) from the ``k`` most similar training vectors (cosine; unit vectors).

    A label's score is the similarity-weighted share of neighbours that carry it, with weights
    ``max(similarity, 0) ** power``: 1.0 when every neighbour has it, so scores work with thresholds.
    """
    import scipy.sparse as sp

    n, n_mem = len(x), len(memory)
    k = max(1, min(int(k), n_mem))
    out = np.zeros((n, memory_labels.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        sim = x[start : start + chunk] @ memory.T  # (chunk, memory)
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < n_mem else np.tile(np.arange(n_mem), (len(sim), 1))
        w = np.maximum(np.take_along_axis(sim, idx, axis=1), 0.0) ** power  # (chunk, k)
        w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
        rows = np.repeat(np.arange(len(sim)), k)
        weights = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(len(sim), n_mem))
        out[start : start + len(sim)] = (weights @ memory_labels).toarray()
    return out


class EmbedKNN(EmbeddingBackend):
    """Nearest training patents in sentence-embedding space vote for their labels.

    No training beyond encoding: the training vectors and labels are the model, and ``k`` and the
    similarity power are chosen on validation. On the sample data as strong as the linear head and
    different enough from TF-IDF to lift a blend (docs/results.md).
    """

    name = "embed-knn"
    DEFAULTS: dict[str, Any] = {
        **EmbeddingBackend.ENCODER_DEFAULTS,
        #: Neighbours and similarity power; "auto" picks from the grids below on validation.
        "k": "auto",
        "power": "auto",
        "k_grid": [10, 20, 30, 50, 100],
        "power_grid": [1.0, 2.0, 3.0, 4.0, 6.0, 8.0],
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        self.memory: np.ndarray | None = None  # (n_train, dim) unit vectors
        self.memory_labels: Any = None  # scipy CSR (n_train, labels)

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        import scipy.sparse as sp

        from patentml.metrics import at_k, choose_threshold

        started = time.perf_counter()
        data = self._embed_splits(train, valid, ctx)
        xt, yt = data["train"]
        xv, yv = data["valid"]
        self.memory = xt.astype(np.float16)
        self.memory_labels = sp.csr_matrix(yt)
        memory = self.memory.astype(np.float32)
        ks = self.params["k_grid"] if self.params["k"] == "auto" else [self.params["k"]]
        powers = self.params["power_grid"] if self.params["power"] == "auto" else [self.params["power"]]
        truth = yv > 0
        best = (-1.0, 0.0, 0, 0.0)
        for k in ks:
            for power in powers:
                scores = knn_scores(xv, memory, self.memory_labels, int(k), float(power))
                _, f1 = choose_threshold(truth, scores, keep_top=True) if len(truth) else (0.5, 0.0)
                p1 = at_k(truth, scores, ks=(1,))["p@1"] if len(truth) else 0.0
                log.info("k=%s power=%s: validation F1 %.4f P@1 %.4f", k, power, f1, p1)
                if f1 > best[0] + 1e-6:
                    best = (f1, p1, int(k), float(power))
        f1, p1, self.params["k"], self.params["power"] = best
        log.info("chose k=%d power=%.1f (validation F1 %.4f, P@1 %.4f)", best[2], best[3], f1, p1)
        seconds = time.perf_counter() - started
        ctx.on_epoch(EpochLog(1, float("nan"), None, f1, p1, seconds, len(xt) / max(seconds, 1e-9)))

    def predict_scores(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        assert self.memory is not None, "fit or load the model first"
        return knn_scores(self._vectors(texts), self.memory.astype(np.float32), self.memory_labels,
                          int(self.params["k"]), float(self.params["power"]))

    def n_params(self) -> int:
        return 0 if self.memory is None else int(self.memory.size)

    def _save(self, folder: Path) -> None:
        assert self.memory is not None
        y = self.memory_labels
        save_arrays(folder / KNN_FILE, {"memory": self.memory, "indptr": y.indptr.astype(np.int64),
                                        "indices": y.indices.astype(np.int32)})
        self._save_encoder(folder)

    def _load(self, folder: Path) -> None:
        import scipy.sparse as sp

        arrays = load_arrays(folder / KNN_FILE)
        memory, indptr, indices = arrays["memory"], arrays["indptr"], arrays["indices"]
        if memory.ndim != 2 or len(indptr) != len(memory) + 1 or (len(indices) and indices.max() >= len(self.labels)):
            raise ConfigError(f"{folder / KNN_FILE}: inconsistent neighbour arrays for {len(self.labels)} labels")
        self.memory = memory
        self.memory_labels = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                                           shape=(len(memory), len(self.labels)))
