"""Text pipeline of the paper: lower-cased word tokens, a training vocabulary, and padded, length-bucketed batches."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from patentml.exceptions import ArtifactError, ConfigError

if TYPE_CHECKING:  # torch is only needed for batching; importing it here would slow every CLI start.
    import torch

#: Paper section 4.3: 250 tokens is the 99th percentile abstract length of USPTO-2M.
MAX_TOKENS = 250
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
UNK_ID = 1
#: The largest CNN kernel is 5 wide; a shorter batch would leave that convolution with no output position.
MIN_BATCH_LENGTH = 5

VOCABULARY_KIND = "patentml.vocabulary"
VOCABULARY_VERSION = 1

# Everything that is not a letter or a digit separates words. "\W" alone keeps "_", which USPTO-2M removes
# as punctuation; Unicode letters and digits stay, since GloVe 6B has tokens such as "café".
_SEPARATORS = re.compile(r"[\W_]+")


def tokenize(text: str, max_tokens: int | None = None) -> list[str]:
    """Lower-case, turn every non-alphanumeric run into a space and split: USPTO-2M's own normalisation.

    Digits are kept ("h1860", "2015"), so raw abstracts (XML, PatentsView) and the already-normalised
    USPTO-2M text give the same tokens. ``max_tokens`` keeps only the first tokens (``None``: all).
    """
    tokens = _SEPARATORS.sub(" ", text.lower()).split()
    return tokens if max_tokens is None else tokens[:max_tokens]


@dataclass
class Vocabulary:
    """Token <-> id map: id 0 is padding, id 1 every unknown word, then training words by frequency."""

    tokens: list[str]
    max_length: int = MAX_TOKENS
    #: How the vocabulary was built; kept so an artifact says which settings produced it.
    min_count: int = 1
    max_size: int | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.tokens) < 2 or self.tokens[PAD_ID] != PAD_TOKEN or self.tokens[UNK_ID] != UNK_TOKEN:
            raise ConfigError(f"a vocabulary must start with {PAD_TOKEN!r} (id 0) and {UNK_TOKEN!r} (id 1)")
        if self.max_length < 1:
            raise ConfigError(f"max_length must be at least 1, got {self.max_length}")
        self._index = {token: i for i, token in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            duplicates = [t for t, n in Counter(self.tokens).items() if n > 1][:5]
            raise ConfigError(f"a vocabulary must not repeat tokens; repeated: {duplicates}")

    @classmethod
    def build(
        cls,
        token_streams: Iterable[Iterable[str]],
        min_count: int = 1,
        max_size: int | None = None,
        max_length: int = MAX_TOKENS,
    ) -> Vocabulary:
        """Count the training documents' tokens and keep words seen ``min_count`` times or more.

        ``max_size`` caps the number of ids *including* padding and unknown, so it equals the
        embedding table's row count. Only the first ``max_length`` tokens of each document are
        counted: later ones are never fed to the model, so they must not earn a row.
        Ties in frequency are broken alphabetically, so the same corpus always gives the same ids.
        """
        if min_count < 1:
            raise ConfigError(f"min_count must be at least 1, got {min_count}")
        if max_size is not None and max_size < 2:
            raise ConfigError(f"max_size counts padding and unknown, so it must be at least 2, got {max_size}")
        counts: Counter[str] = Counter()
        for stream in token_streams:
            counts.update(itertools.islice(stream, max_length))
        # Text never tokenizes to "<pad>", but a caller's own token stream could hold it.
        counts.pop(PAD_TOKEN, None)
        counts.pop(UNK_TOKEN, None)
        kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max_size - 2]
        return cls([PAD_TOKEN, UNK_TOKEN, *kept], max_length=max_length, min_count=min_count, max_size=max_size)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def id_of(self, token: str) -> int:
        """The id of ``token``, or the unknown id."""
        return self._index.get(token, UNK_ID)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of the first ``max_length`` tokens; unknown words map to id 1."""
        index = self._index
        return [index.get(t, UNK_ID) for t in itertools.islice(tokens, self.max_length)]

    def encode_text(self, text: str) -> list[int]:
        """Tokenize and encode a raw abstract."""
        return self.encode(tokenize(text, self.max_length))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``, padding included (useful when inspecting a batch)."""
        return [self.tokens[i] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for model artifacts (never pickled)."""
        return {
            "kind": VOCABULARY_KIND,
            "version": VOCABULARY_VERSION,
            "max_length": self.max_length,
            "min_count": self.min_count,
            "max_size": self.max_size,
            "tokens": list(self.tokens),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """Rebuild a vocabulary written by :meth:`to_dict`; a malformed one is an :class:`ArtifactError`."""
        if data.get("kind") != VOCABULARY_KIND or data.get("version") != VOCABULARY_VERSION:
            raise ArtifactError(
                f"not a PatentML vocabulary of version {VOCABULARY_VERSION}: "
                f"kind={data.get('kind')!r}, version={data.get('version')!r}"
            )
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ArtifactError("vocabulary 'tokens' must be a list of strings")
        try:
            return cls(
                tokens,
                max_length=int(data["max_length"]),
                min_count=int(data.get("min_count", 1)),
                max_size=None if data.get("max_size") is None else int(data["max_size"]),
            )
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(f"vocabulary artifact is invalid: {exc}") from exc


def pad_batch(
    sequences: Sequence[Sequence[int]], min_length: int = MIN_BATCH_LENGTH, pad_id: int = PAD_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the batch's longest (at least ``min_length``): ``(ids (batch, seq), lengths (batch,))``.

    Padding to the batch rather than to 250 is what makes length bucketing pay: a batch of short
    abstracts costs short convolutions. The model masks by ``lengths``, so the padded width never
    changes its output.
    """
    import torch

    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)  # (batch,)
    width = max(int(lengths.max()), min_length)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (batch, seq)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return ids, lengths


def length_bucketed_batches(
    lengths: Sequence[int],
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    chunk_batches: int = 50,
) -> list[list[int]]:
    """Split example indices into batches of similar length; every index appears exactly once.

    With ``shuffle``: shuffle all indices, sort each chunk of ``chunk_batches`` batches by length,
    cut it into batches and shuffle the batch order. Sorting only within chunks keeps batches
    random enough for SGD while most of the padding disappears. Without ``shuffle`` (evaluation),
    sort everything by length: least padding, deterministic order.
    """
    if batch_size < 1 or chunk_batches < 1:
        raise ValueError(f"batch_size and chunk_batches must be positive, got {batch_size}, {chunk_batches}")
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])  # stable: equal lengths keep their input order
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches
