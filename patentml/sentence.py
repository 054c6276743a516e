"""Sentence vectors of a BERT-family encoder: pooled as the model's own config says, L2-normalised, cached.

Vectors are cached by the hash of the text they encode (in Postgres when a run has a database) and
memoised in this process, so a nightly run encodes only new or changed patents and the members of a
blend that share an encoder encode each text once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from patentml.exceptions import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

#: sentence-transformers pooling flags (``1_Pooling/config.json``) that PatentML implements, by our name.
POOLING_FLAGS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}


class EmbeddingCache(Protocol):
    """Vectors by (encoder key, text hash); implemented on Postgres in patentml.embedcache."""

    def get_many(self, encoder_key: str, hashes: Sequence[str]) -> dict[str, "np.ndarray"]: ...

    def put_many(self, encoder_key: str, vectors: dict[str, "np.ndarray"]) -> None: ...


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pooling_mode(model_dir: Path | str) -> str:
    """The pooling a sentence-transformers model folder declares (``modules.json`` -> its Pooling config).

    Plain Hugging Face folders declare none: mean pooling, the sentence-transformers default.
    """
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    pool_dir = "1_Pooling"
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{modules_file}: not readable JSON ({exc})") from exc
        pool_dir = next((m.get("path", pool_dir) for m in modules if str(m.get("type", "")).endswith(".Pooling")),
                        pool_dir)
    config_file = model_dir / pool_dir / "config.json"
    if not config_file.is_file():
        return "mean"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{config_file}: not readable JSON ({exc})") from exc
    on = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
    known = {flag: name for name, flag in POOLING_FLAGS.items()}
    if len(on) != 1 or on[0] not in known:
        raise ConfigError(f"{config_file}: pooling {', '.join(on) or 'none'} is not supported; "
                          f"one of {', '.join(POOLING_FLAGS.values())} must be true")
    return known[on[0]]


def vector_key(config: dict, source: str, max_length: int, pooling: str, tag: str | None) -> str:
    """Names the vectors of an encoder in caches: its config and name, the length cap, the pooling
    (when not mean) and the tag of fine-tuned weights. Every runtime computing the same vectors shares it."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = Path(source).name if Path(source).is_dir() else source
    key = f"{name}:{max_length}:{digest}"
    if pooling != "mean":
        key += f":{pooling}"
    return f"{key}:{tag}" if tag else key


def save_pooling(folder: Path, mode: str, dim: int) -> None:
    """Write a sentence-transformers pooling config beside saved encoder weights, so they load as they were pooled."""
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    flags = {flag: mode == name for name, flag in POOLING_FLAGS.items()}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": dim, **flags}, indent=1))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}], indent=1))


class SentenceEncoder:
    """Pooled, L2-normalised last-layer vectors of a BERT-family encoder (sentence-transformers style).

    ``tag`` names fine-tuned weights (which the config alone does not identify) so that their vectors
    never mix with the base encoder's in a cache.
    """

    def __init__(self, name_or_path: str | None, max_length: int, batch_size: int = 32, tag: str | None = None) -> None:
        from patentml.embeddings import load_encoder, resolve_encoder

        self.source = resolve_encoder(name_or_path)
        self.max_length = max_length
        self.batch_size = batch_size
        self.tag = tag
        self.tokenizer, self.model = load_encoder(name_or_path)
        self.dim = int(self.model.config.hidden_size)
        self.pooling = pooling_mode(self.source) if Path(self.source).is_dir() else "mean"
        # Fast tokenizers refuse concurrent calls that set truncation/padding ("Already borrowed"); the
        # forward passes of prediction's worker threads run in parallel, the tokenizing does not.
        self._tokenizer_lock = threading.Lock()

    @property
    def key(self) -> str:
        """Identifies the vectors (:func:`vector_key`)."""
        return vector_key(self.model.config.to_dict(), self.source, self.max_length, self.pooling, self.tag)

    def pool(self, texts: Sequence[str], max_length: int | None = None) -> "torch.Tensor":
        """(batch, dim) unit vectors; differentiable, so fine-tuning trains through it."""
        import torch

        device = next(self.model.parameters()).device
        with self._tokenizer_lock:
            enc = self.tokenizer(list(texts), truncation=True, max_length=max_length or self.max_length, padding=True,
                                 return_tensors="pt")
        enc = enc.to(device)
        hidden = self.model(**enc).last_hidden_state  # (batch, seq, dim)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        if self.pooling == "cls":
            pooled = hidden[:, 0]  # (batch, dim)
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).amax(1)  # (batch, dim)
        else:  # mean, or the sum over the square root of the length: one direction once normalised
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (batch, dim)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def encode(self, texts: Sequence[str], progress: bool = False) -> "np.ndarray":
        """(n, dim) float32 unit vectors, in length-sorted batches (each padded to its own longest text)."""
        import numpy as np
        import torch

        from patentml.progress import tracked

        was_training = self.model.training
        self.model.eval()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(order), self.batch_size)
        with torch.inference_mode():
            for start in tracked(starts, len(texts), "encoding abstracts", "abstract", bar=progress,
                                 sizes=(min(self.batch_size, len(order) - s) for s in starts)):
                rows = order[start : start + self.batch_size]
                out[rows] = self.pool([texts[i] for i in rows]).cpu().numpy()
        self.model.train(was_training)
        return out

    def save(self, folder: Path, weights: bool) -> None:
        """Tokenizer and pooling config into ``folder``; the weights too when they differ from the base encoder's."""
        self.tokenizer.save_pretrained(folder)
        if weights:
            self.model.save_pretrained(folder, safe_serialization=True)
            save_pooling(folder, self.pooling, self.dim)


#: Encoders are built one at a time: prediction's worker threads ask for their model's encoder at once, and
#: transformers' lazy imports are not thread-safe ("cannot import name 'AutoTokenizer'").
BUILD_LOCK = threading.RLock()


def inference_encoder(source: str | None, max_length: int, batch_size: int, tag: str | None = None,
                      precision: str = "fp32") -> "Encoder":
    """The encoder that computes frozen vectors (training's cached inputs and prediction).

    ONNX Runtime unless ``PATENTML_ENCODER_RUNTIME=torch``: its fp32 vectors equal torch's (cosine 1.0000)
    and share their cache key, about twice as fast on CPU (``benchmarks/encoder.py``); ``precision`` int8
    is ONNX dynamic quantisation, whose vectors get a key of their own. Without onnxruntime, fp32 falls
    back to torch.
    """
    from patentml.exceptions import DependencyError
    from patentml.settings import get_settings

    settings = get_settings()
    if settings.encoder_runtime == "torch" and precision == "fp32":
        return SentenceEncoder(source, max_length, batch_size, tag=tag)
    from patentml.fastencoder import FastEncoder

    try:
        return FastEncoder(source, max_length, batch_size, tag, runtime=settings.encoder_runtime,
                           precision=precision, threads=settings.threads)
    except DependencyError as exc:
        if precision != "fp32":
            raise
        log.warning("%s; encoding with torch", exc)
        return SentenceEncoder(source, max_length, batch_size, tag=tag)


class Encoder(Protocol):
    """What computes vectors: :class:`SentenceEncoder` or :class:`patentml.fastencoder.FastEncoder`."""

    key: str
    dim: int

    def encode(self, texts: Sequence[str], progress: bool = False) -> "np.ndarray": ...

    def save(self, folder: Path, weights: bool) -> None: ...


#: Vectors computed in this process, by (encoder key, text hash). Bounded; the oldest entries leave first.
_RECENT: "OrderedDict[tuple[str, str], np.ndarray]" = OrderedDict()
_RECENT_LOCK = threading.Lock()  # prediction scores in worker threads
RECENT_MAX = 50_000


def forget_recent() -> None:
    """Empty this process's vector memo (benchmarks: one model's vectors must not speed up the next)."""
    with _RECENT_LOCK:
        _RECENT.clear()


def embed_corpus(encoder: "Encoder", texts: Sequence[str], cache: EmbeddingCache | None,
                 progress: bool = False) -> tuple["np.ndarray", int]:
    """Vectors for ``texts``, encoding only those neither this process nor the cache has; returns
    (vectors, number encoded)."""
    import numpy as np

    key = encoder.key
    hashes = [text_hash(t) for t in texts]
    with _RECENT_LOCK:
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
    with _RECENT_LOCK:
        for h, v in zip(hashes, vectors):
            _RECENT[(key, h)] = v
            _RECENT.move_to_end((key, h))
        while len(_RECENT) > RECENT_MAX:
            _RECENT.popitem(last=False)
    return vectors, len(missing)
