"""A split as flat memory-mapped arrays: token rows (ids or vectors) with offsets, and label indices with offsets.

Training data arrives as a stream from Postgres and is written once (per run for GloVe ids, per
snapshot for frozen BERT token vectors) into flat files, so memory stays flat as the corpus grows.
Batches are bucketed by length and padded to their own longest sequence.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from patentml.labels import multi_hot_rows
from patentml.text import length_bucketed_batches
from patentml.variants.base import Corpus, Doc


@dataclass
class FlatSplit:
    """Token rows with offsets, and label indices with offsets, of ``len(offsets) - 1`` documents."""

    tokens: np.ndarray  # (total_tokens,) int32 ids, or (total_tokens, dim) float16 vectors
    offsets: np.ndarray  # (n + 1,) int64
    label_idx: np.ndarray  # (total_labels,) int32
    label_offsets: np.ndarray  # (n + 1,) int64
    n_labels: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def label_rows(self, rows: Sequence[int]) -> list[np.ndarray]:
        return [self.label_idx[self.label_offsets[i] : self.label_offsets[i + 1]] for i in rows]

    def targets(self, rows: Sequence[int]) -> torch.Tensor:
        """Multi-hot (batch, labels) float targets."""
        return torch.from_numpy(multi_hot_rows(self.label_rows(rows), self.n_labels))

    def truth(self) -> np.ndarray:
        """Multi-hot (n, labels) bool truth of the whole split."""
        return multi_hot_rows(self.label_rows(range(len(self))), self.n_labels, dtype="bool")

    def inputs(self, rows: Sequence[int], min_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = [int(self.offsets[i + 1] - self.offsets[i]) for i in rows]
        width = max(max(lengths), min_length)
        if self.tokens.ndim == 1:
            x = np.zeros((len(rows), width), dtype=np.int64)  # (batch, seq)
        else:
            x = np.zeros((len(rows), width, self.tokens.shape[1]), dtype=np.float32)  # (batch, seq, dim)
        for r, i in enumerate(rows):
            x[r, : lengths[r]] = self.tokens[self.offsets[i] : self.offsets[i + 1]]
        return torch.from_numpy(x), torch.tensor(lengths, dtype=torch.long)

    def batches(self, batch_size: int, min_length: int, shuffle: bool,
                seed: int = 0) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        for rows in length_bucketed_batches(self.lengths.tolist(), batch_size, shuffle=shuffle, seed=seed):
            x, lengths = self.inputs(rows, min_length)
            yield rows, x, lengths

    @classmethod
    def open(cls, folder: Path) -> "FlatSplit":
        meta = json.loads((folder / "meta.json").read_text())
        tokens = np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r", shape=tuple(meta["shape"]))
        return cls(tokens=tokens, offsets=np.load(folder / "offsets.npy"), label_idx=np.load(folder / "label_idx.npy"),
                   label_offsets=np.load(folder / "label_offsets.npy"), n_labels=int(meta["n_labels"]))


def write_flat_split(folder: Path, corpus: Corpus, labels: Sequence[str],
                     encode: Callable[[list[Doc]], list[np.ndarray]], dtype: str, dim: int | None = None,
                     chunk: int = 256, progress: bool = False, desc: str = "encode") -> FlatSplit:
    """Stream a corpus through ``encode`` (chunks of docs -> token arrays) into ``folder``; atomic."""
    from patentml.progress import tracked

    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    index = {l: i for i, l in enumerate(labels)}
    offsets, label_offsets, label_idx = [0], [0], []
    n_tokens = 0
    with open(tmp / "tokens.bin", "wb") as out:
        buf: list[Doc] = []

        def flush() -> None:
            nonlocal n_tokens
            for doc, arr in zip(buf, encode(buf)):
                out.write(np.ascontiguousarray(arr, dtype=dtype).tobytes())
                n_tokens += arr.shape[0]
                offsets.append(n_tokens)
                label_idx.extend(index[l] for l in doc[2] if l in index)
                label_offsets.append(len(label_idx))
            buf.clear()

        for doc in tracked(corpus, len(corpus), desc, "abstract", bar=progress):
            buf.append(doc)
            if len(buf) >= chunk:
                flush()
        flush()
    shape = [n_tokens] if dim is None else [n_tokens, dim]
    (tmp / "meta.json").write_text(json.dumps({"dtype": dtype, "shape": shape, "n_labels": len(labels)}))
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(tmp / "label_idx.npy", np.asarray(label_idx, dtype=np.int32))
    np.save(tmp / "label_offsets.npy", np.asarray(label_offsets, dtype=np.int64))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return FlatSplit.open(folder)
