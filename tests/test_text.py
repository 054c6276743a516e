"""Text pipeline: tokenization as USPTO-2M, vocabulary ids and artifacts, padding and length buckets."""

from __future__ import annotations

import json
import random

import pytest
import torch

from patentml.exceptions import ArtifactError, ConfigError
from patentml.text import (
    MAX_TOKENS,
    PAD_ID,
    UNK_ID,
    Vocabulary,
    length_bucketed_batches,
    pad_batch,
    tokenize,
)


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    text = "A method, for (re)using H-1860 widget_x; 2015!  Café\tdone."
    assert tokenize(text) == ["a", "method", "for", "re", "using", "h", "1860", "widget", "x", "2015", "café", "done"]


def test_tokenize_is_idempotent_on_uspto2m_text() -> None:
    # USPTO-2M abstracts are already lower-cased without punctuation: tokenizing them is a plain split.
    text = "a new and distinct hybrid of artichoke named ps h1860 characterized by its numerous bud numbers"
    assert tokenize(text) == text.split()
    assert tokenize("") == []
    assert tokenize("  ,;!  ") == []


def test_tokenize_cap() -> None:
    words = " ".join(f"w{i}" for i in range(300))
    assert len(tokenize(words)) == 300
    assert tokenize(words, MAX_TOKENS) == [f"w{i}" for i in range(250)]


def build_small() -> Vocabulary:
    docs = [["b", "a", "c"], ["a", "b", "d"], ["a", "e"]]
    # counts: a 3, b 2, c 1, d 1, e 1
    return Vocabulary.build(docs, min_count=1)


def test_vocabulary_ids_by_frequency_then_alphabet() -> None:
    vocab = build_small()
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b", "c", "d", "e"]
    assert vocab.id_of("<pad>") == PAD_ID and vocab.id_of("zzz") == UNK_ID
    assert vocab.encode(["a", "zzz", "e"]) == [2, 1, 6]
    assert "a" in vocab and "zzz" not in vocab and len(vocab) == 7


def test_vocabulary_min_count_and_max_size() -> None:
    docs = [["b", "a", "c"], ["a", "b", "d"], ["a", "e"]]
    assert Vocabulary.build(docs, min_count=2).tokens == ["<pad>", "<unk>", "a", "b"]
    # max_size counts padding and unknown: 3 rows = pad, unk, "a".
    assert Vocabulary.build(docs, max_size=3).tokens == ["<pad>", "<unk>", "a"]
    with pytest.raises(ConfigError):
        Vocabulary.build(docs, min_count=0)
    with pytest.raises(ConfigError):
        Vocabulary.build(docs, max_size=1)


def test_vocabulary_counts_only_visible_tokens_and_encode_caps() -> None:
    # "late" appears only after the 3rd token of each document: the model never sees it.
    vocab = Vocabulary.build([["x", "y", "z", "late"], ["x", "y", "z", "late"]], max_length=3)
    assert "late" not in vocab
    assert vocab.encode(["x", "y", "z", "x", "y"]) == [2, 3, 4]
    assert len(Vocabulary.build([["a"]]).encode(["a"] * 400)) == MAX_TOKENS
    assert vocab.encode_text("X, Y! unknown") == [2, 3, UNK_ID]


def test_vocabulary_dict_round_trip_is_json() -> None:
    vocab = Vocabulary.build([["a", "b"], ["a"]], min_count=1, max_size=10, max_length=7)
    data = json.loads(json.dumps(vocab.to_dict()))
    again = Vocabulary.from_dict(data)
    assert again == vocab and again.encode(["b", "q"]) == [3, UNK_ID]


def test_vocabulary_rejects_broken_artifacts() -> None:
    good = build_small().to_dict()
    with pytest.raises(ArtifactError, match="version"):
        Vocabulary.from_dict({**good, "version": 99})
    with pytest.raises(ArtifactError):
        Vocabulary.from_dict({**good, "tokens": ["a", "b"]})
    with pytest.raises(ArtifactError):
        Vocabulary.from_dict({**good, "tokens": ["<pad>", "<unk>", "a", "a"]})
    with pytest.raises(ArtifactError):
        Vocabulary.from_dict({k: v for k, v in good.items() if k != "max_length"})


def test_pad_batch_pads_to_longest_with_minimum() -> None:
    ids, lengths = pad_batch([[5, 6, 7], [8], []])
    # longest is 3 < 5, so the batch is 5 wide; the widest kernel (5) must fit once.
    assert ids.dtype == torch.long and ids.shape == (3, 5)
    assert ids.tolist() == [[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert lengths.tolist() == [3, 1, 0]
    ids, lengths = pad_batch([list(range(1, 9)), [3]])
    assert ids.shape == (2, 8) and lengths.tolist() == [8, 1]
    with pytest.raises(ValueError):
        pad_batch([])


def test_length_buckets_cover_every_index_once_and_cut_padding() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(8, 250) for _ in range(1000)]
    batches = length_bucketed_batches(lengths, batch_size=32, shuffle=True, seed=3, chunk_batches=10)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    assert batches == length_bucketed_batches(lengths, batch_size=32, shuffle=True, seed=3, chunk_batches=10)
    assert batches != length_bucketed_batches(lengths, batch_size=32, shuffle=True, seed=4, chunk_batches=10)

    def padded_cells(bs: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    shuffled = list(range(1000))
    random.Random(0).shuffle(shuffled)
    plain = [shuffled[i : i + 32] for i in range(0, 1000, 32)]
    assert padded_cells(batches) < 0.7 * padded_cells(plain)


def test_length_buckets_without_shuffle_are_sorted() -> None:
    lengths = [5, 1, 4, 1, 3]
    assert length_bucketed_batches(lengths, batch_size=2, shuffle=False) == [[1, 3], [4, 2], [0]]
    with pytest.raises(ValueError):
        length_bucketed_batches(lengths, batch_size=0)
