"""Nearest-neighbour label voting: the most similar training patents vote for their labels.

Similarity is the cosine of sentence vectors, optionally mixed with the cosine of TF-IDF rows (a
hybrid that catches exact technical terms). The search itself is :mod:`patentml.ann`'s: exact below a
size threshold, an HNSW index above it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def nearest(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar memory rows per query row, most similar first: (indices, similarities)."""
    from patentml.metrics import top_k

    idx = top_k(sim, k)
    return idx, np.take_along_axis(sim, idx, axis=1)


def vote_weights(sims: np.ndarray, power: float) -> np.ndarray:
    """Each neighbour's share of the vote (n, k): ``max(similarity, 0) ** power``, normalised per row."""
    w = np.maximum(sims, 0.0) ** power  # (n, k)
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return w


def vote(idx: np.ndarray, sims: np.ndarray, memory_labels: Any, power: float,
         row_weights: np.ndarray | None = None) -> np.ndarray:
    """Label scores: the neighbours' labels weighted by ``max(similarity, 0) ** power``, as a share of
    the total weight (1.0 when every neighbour carries the label), so scores work with thresholds.
    ``row_weights`` (one factor per memory row) scales each neighbour's vote before the shares are taken."""
    import scipy.sparse as sp

    w = vote_weights(sims, power)  # (n, k)
    if row_weights is not None:
        w = w * row_weights[idx]
        w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    weights = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(len(idx), memory_labels.shape[0]))
    return np.asarray((weights @ memory_labels).todense(), dtype=np.float32)


def similarities(x: np.ndarray, memory: np.ndarray, text_x: Any = None, text_memory: Any = None,
                 text_weight: float = 0.0) -> np.ndarray:
    """Cosine similarity of queries to memory rows: sentence vectors, mixed with TF-IDF rows by ``text_weight``."""
    sim = x @ memory.T
    if text_weight > 0:
        sim = (1.0 - text_weight) * sim + text_weight * (text_x @ text_memory.T).toarray()
    return sim


def knn_scores(x: np.ndarray, memory: Any, memory_labels: Any, k: int, power: float,
               text_x: Any = None, text_memory: Any = None, text_weight: float = 0.0) -> np.ndarray:
    """Label scores (n, labels) from the ``k`` most similar training patents (see ``vote``).

    ``memory`` is the (n_train, dim) vectors (exact search) or a :class:`patentml.ann.VectorIndex`
    (exact below its threshold, HNSW above); the search runs in bounded chunks of queries.
    """
    from patentml.ann import VectorIndex, nearest_rows

    index = memory if isinstance(memory, VectorIndex) else VectorIndex(memory=memory)
    return vote(*nearest_rows(x, index, k, text_x, text_memory, text_weight), memory_labels, power)
