"""Approximate kNN: exact search by hand, HNSW against exact, the hybrid re-scoring, files saved without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from patentml.ann import HnswParams, VectorIndex, nearest_rows
from patentml.exceptions import ArtifactError
from patentml.knn import nearest, similarities

pytest.importorskip("faiss", reason="needs faiss-cpu")


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 centres, like topics: neighbours are close but not duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    return unit(centres[rng.integers(0, 20, n)] + 0.4 * rng.normal(size=(n, dim)))


def test_exact_search_by_hand() -> None:
    memory = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    index = VectorIndex.build(memory)
    assert index.kind == "exact"
    idx, sims = nearest_rows(np.array([[0.8, 0.6]], dtype=np.float32), index, 3)
    # cosines: 0.8, 0.6, 0.48 + 0.48 = 0.96, -0.8
    assert idx.tolist() == [[2, 0, 1]]
    np.testing.assert_allclose(sims, [[0.96, 0.8, 0.6]], rtol=1e-6)


def test_exact_path_equals_nearest_with_tfidf() -> None:
    memory, queries = clustered(300), clustered(40, seed=1)
    text_memory = sp.random(300, 50, density=0.1, format="csr", random_state=3, dtype=np.float64)
    text_x = sp.random(40, 50, density=0.1, format="csr", random_state=4, dtype=np.float64)
    want = nearest(similarities(queries, memory, text_x, text_memory, 0.3), 10)
    got = nearest_rows(queries, VectorIndex.build(memory), 10, text_x, text_memory, 0.3)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)


def test_hnsw_agrees_with_exact_search() -> None:
    memory, queries = clustered(3000), clustered(200, seed=1)
    # Random clusters in 32 dimensions are harder for a graph than sentence vectors: a wider search.
    index = VectorIndex.build(memory, threshold=1000, params=HnswParams(ef_search=256, candidates=200))
    assert index.kind == "hnsw" and len(index) == 3000 and index.dim == 32
    exact_idx, _ = nearest(queries @ memory.T, 10)
    idx, sims = nearest_rows(queries, index, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact_idx)])
    assert recall >= 0.98, recall
    # Re-scored exactly (float16-stored vectors): the similarities are those of the rows returned.
    np.testing.assert_allclose(sims, np.einsum("nd,nkd->nk", queries, memory[idx]), atol=2e-3)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)  # most similar first


def test_hnsw_with_every_row_as_candidate_is_the_exact_hybrid() -> None:
    memory, queries = clustered(400), clustered(30, seed=1)
    memory = memory.astype(np.float16).astype(np.float32)  # what the index stores, so both sides agree
    text_memory = sp.random(400, 60, density=0.1, format="csr", random_state=3, dtype=np.float64)
    text_x = sp.random(30, 60, density=0.1, format="csr", random_state=4, dtype=np.float64)
    index = VectorIndex.build(memory, threshold=100, params=HnswParams(m=16, candidates=400, ef_search=400))
    want = nearest(similarities(queries, memory, text_x, text_memory, 0.5), 10)
    got = nearest_rows(queries, index, 10, text_x, text_memory, 0.5)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)


def test_save_and_load_round_trip_without_pickle(tmp_path: Path) -> None:
    memory, queries = clustered(1500), clustered(50, seed=1)
    index = VectorIndex.build(memory, threshold=100, params=HnswParams(m=16))
    path = tmp_path / "ann.safetensors"
    index.save(path)
    # A plain safetensors file: faiss's binary layout as uint8, its sha256 and the shape; nothing to unpickle.
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    assert sorted(arrays) == ["index", "sha256", "shape"] and arrays["index"].dtype == np.uint8
    assert arrays["shape"].tolist() == [1500, 32, 1]
    loaded = VectorIndex.load(path, params=HnswParams(m=16))
    assert loaded.kind == "hnsw" and len(loaded) == 1500
    for a, b in zip(nearest_rows(queries, index, 5), nearest_rows(queries, loaded, 5)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="save the memory array"):
        VectorIndex.build(memory).save(tmp_path / "exact.safetensors")


def test_a_corrupted_index_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "ann.safetensors"
    VectorIndex.build(clustered(500), threshold=100, params=HnswParams(m=8)).save(path)
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.safetensors"
    data[len(data) // 2] ^= 0xFF  # inside the index bytes
    flipped.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"ANN index file {flipped} does not match its checksum"):
        VectorIndex.load(flipped)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: len(data) // 3])
    with pytest.raises(ArtifactError, match=str(truncated)):
        VectorIndex.load(truncated)
    foreign = tmp_path / "foreign.safetensors"
    from patentml.artifact import save_arrays

    save_arrays(foreign, {"memory": np.zeros((3, 4), np.float32)})
    with pytest.raises(ArtifactError, match=f"{foreign} is not a PatentML ANN index"):
        VectorIndex.load(foreign)
