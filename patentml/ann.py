"""Nearest memory rows by cosine: exact below a size threshold, a faiss HNSW index above it, saved without pickle."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patentml.exceptions import ArtifactError, DependencyError

#: Memories up to this many rows are searched exactly (a chunked matrix product); larger ones through
#: the HNSW index. benchmarks/ann.py measures where the index starts to pay.
EXACT_MAX = 100_000
#: Floats of one chunk of the exact similarity matrix (128 MB): queries x memory never grows past it.
CHUNK_FLOATS = 32 * 1024 * 1024
INDEX_FORMAT_VERSION = 1


@dataclass(frozen=True)
class HnswParams:
    """faiss HNSW settings; vectors stored as float16 (what embed-knn keeps of its memory anyway)."""

    #: Graph links per vector (memory: about 2 * m int32 per vector on the base level).
    m: int = 32
    ef_construction: int = 80
    #: Search breadth; raised to the number of candidates when that is larger.
    ef_search: int = 128
    #: Candidates fetched per query and re-scored exactly (also with TF-IDF for the hybrid): k' > k.
    candidates: int = 100


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise DependencyError("approximate kNN needs faiss (pip install faiss-cpu)") from exc
    return faiss


class VectorIndex:
    """A memory of unit vectors (n, dim) searched by inner product; ``exact`` or ``hnsw``."""

    def __init__(self, memory: np.ndarray | None = None, index: Any = None,
                 params: HnswParams = HnswParams()) -> None:
        if (memory is None) == (index is None):
            raise ValueError("give the memory (exact search) or a faiss index (approximate), not both")
        self.memory = None if memory is None else np.ascontiguousarray(memory, dtype=np.float32)
        self.index = index
        self.params = params

    @classmethod
    def build(cls, memory: np.ndarray, threshold: int | None = None, params: HnswParams = HnswParams()) -> "VectorIndex":
        """Exact for up to ``threshold`` rows (None: :data:`EXACT_MAX`), else an HNSW graph over float16 vectors."""
        if len(memory) <= (EXACT_MAX if threshold is None else int(threshold)):
            return cls(memory=memory, params=params)
        faiss = _faiss()
        index = faiss.IndexHNSWSQ(memory.shape[1], faiss.ScalarQuantizer.QT_fp16, params.m,
                                  faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.train(memory[:1].astype(np.float32))  # fp16 needs no statistics; faiss wants the call
        index.add(np.ascontiguousarray(memory, dtype=np.float32))
        return cls(index=index, params=params)

    @property
    def kind(self) -> str:
        return "exact" if self.index is None else "hnsw"

    def __len__(self) -> int:
        return len(self.memory) if self.memory is not None else int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.memory.shape[1]) if self.memory is not None else int(self.index.d)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Memory rows (len(rows), dim) as stored (float16-rounded in an HNSW index)."""
        if self.memory is not None:
            return self.memory[rows]
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def candidates(self, x: np.ndarray, n: int) -> np.ndarray:
        """(len(x), n) memory rows near each query by the graph, -1 where it found fewer."""
        self.index.hnsw.efSearch = max(self.params.ef_search, n)
        _, rows = self.index.search(np.ascontiguousarray(x, dtype=np.float32), n)
        return rows

    # -- files -------------------------------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        """The HNSW index as one safetensors file (faiss's own binary layout as bytes, a checksum, no pickle)."""
        from patentml.artifact import save_arrays

        if self.index is None:
            raise ValueError("an exact index is its memory: save the memory array instead")
        blob = _faiss().serialize_index(self.index)  # (bytes,) uint8
        save_arrays(path, {"index": blob, "sha256": np.frombuffer(hashlib.sha256(blob.tobytes()).digest(), np.uint8),
                           "shape": np.array([len(self), self.dim, INDEX_FORMAT_VERSION], dtype=np.int64)})

    @classmethod
    def load(cls, path: Path | str, params: HnswParams = HnswParams()) -> "VectorIndex":
        """Read an index written by :meth:`save`; a damaged or foreign file raises ArtifactError naming it."""
        from patentml.artifact import load_arrays

        path = Path(path)
        arrays = load_arrays(path)
        if set(arrays) != {"index", "sha256", "shape"} or arrays["shape"].shape != (3,):
            raise ArtifactError(f"{path} is not a PatentML ANN index (arrays {sorted(arrays)})")
        n, dim, version = (int(v) for v in arrays["shape"])
        if version > INDEX_FORMAT_VERSION:
            raise ArtifactError(f"{path}: ANN index format {version}; this PatentML reads up to {INDEX_FORMAT_VERSION}")
        blob = arrays["index"]
        if hashlib.sha256(blob.tobytes()).digest() != arrays["sha256"].tobytes():
            raise ArtifactError(f"ANN index file {path} does not match its checksum: it is corrupted or changed")
        try:
            index = _faiss().deserialize_index(blob)
        except RuntimeError as exc:
            raise ArtifactError(f"ANN index file {path} could not be read by faiss: {exc}") from exc
        if int(index.ntotal) != n or int(index.d) != dim:
            raise ArtifactError(f"{path}: index holds {index.ntotal} x {index.d} vectors, its header says {n} x {dim}")
        return cls(index=index, params=params)


def _hybrid(x: np.ndarray, vectors: np.ndarray, rows: np.ndarray, text_x: Any, text_memory: Any,
            text_weight: float) -> np.ndarray:
    """Similarities (n, c) of each query to its candidate rows, mixed with TF-IDF as embed-knn's ``similarities``."""
    sim = np.einsum("nd,ncd->nc", x, vectors)
    if text_weight > 0:
        queries = text_x[np.repeat(np.arange(len(rows)), rows.shape[1])]
        text = np.asarray(queries.multiply(text_memory[rows.ravel()]).sum(axis=1)).reshape(rows.shape)
        sim = (1.0 - text_weight) * sim + text_weight * text
    return sim


def nearest_rows(x: np.ndarray, index: VectorIndex, k: int, text_x: Any = None, text_memory: Any = None,
                 text_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar memory rows per query, most similar first: (indices, similarities), as
    ``nearest(similarities(...), k)`` gives them, without forming the full similarity matrix.

    Exact index: that very computation, in chunks of queries bounded by CHUNK_FLOATS. HNSW: the graph's
    ``candidates`` nearest rows by vector, re-scored exactly (with TF-IDF when ``text_weight`` > 0).
    """
    from patentml.metrics import top_k
    from patentml.knn import nearest, similarities

    k = max(1, min(int(k), len(index)))
    x = np.ascontiguousarray(x, dtype=np.float32)
    idx = np.zeros((len(x), k), dtype=np.int64)
    sims = np.zeros((len(x), k), dtype=np.float32)
    if index.memory is not None:
        step = max(1, CHUNK_FLOATS // max(len(index), 1))
        for s in range(0, len(x), step):
            rows = slice(s, s + step)
            sim = similarities(x[rows], index.memory, text_x[rows] if text_weight > 0 else None, text_memory,
                               text_weight)
            idx[rows], sims[rows] = nearest(sim, k)
        return idx, sims
    n_cand = max(index.params.candidates, k)
    step = max(1, CHUNK_FLOATS // (n_cand * index.dim))
    for s in range(0, len(x), step):
        rows = slice(s, s + step)
        cand = index.candidates(x[rows], n_cand)  # (b, c)
        found = cand >= 0
        safe = np.where(found, cand, 0)
        vectors = index.vectors(safe.ravel()).reshape(*safe.shape, index.dim)  # (b, c, dim)
        sim = _hybrid(x[rows], vectors, safe, text_x[rows] if text_weight > 0 else None, text_memory, text_weight)
        sim = np.where(found, sim, -np.inf)
        best = top_k(sim, k)  # (b, k) positions among the candidates
        idx[rows] = np.take_along_axis(safe, best, axis=1)
        sims[rows] = np.take_along_axis(sim, best, axis=1)
    return idx, sims
