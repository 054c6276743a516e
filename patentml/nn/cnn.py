"""The paper's CNN (section 4.3): word vectors -> 4 parallel Conv1d (2,3,4,5) -> max-pool -> dense 512 -> logits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from patentml.exceptions import ConfigError

INPUT_MODES = ("ids", "vectors")


@dataclass(frozen=True)
class CNNConfig:
    """Shape and regularisation of :class:`PaperCNN`; defaults are the paper's (512 filters, kernels 2-5, dense 512).

    ``input_mode="ids"``: the model owns an embedding table and takes token ids (GloVe+CNN).
    ``input_mode="vectors"``: the caller passes token vectors ``(batch, seq, embed_dim)``, e.g. cached
    BERT hidden states (BERT+CNN); there is no embedding table, so ``vocab_size`` must be 0.

    ``trainable_embeddings=False`` is the paper's frozen GloVe. Words of the vocabulary that GloVe
    does not know (and the unknown-word id) would then be stuck at a meaningless vector, so
    ``num_oov`` of them get rows in a small *trainable* table instead (see :class:`PaperCNN`).
    """

    vocab_size: int
    embed_dim: int
    num_labels: int
    num_filters: int = 512
    kernel_sizes: tuple[int, ...] = (2, 3, 4, 5)
    hidden: int = 512
    dropout: float = 0.5
    embed_dropout: float = 0.0
    trainable_embeddings: bool = False
    padding_idx: int = 0
    input_mode: str = "ids"
    #: Vocabulary rows without a pretrained vector, learned while the pretrained rows stay frozen.
    num_oov: int = 0

    def __post_init__(self) -> None:
        # Artifacts come back from JSON with lists; the dataclass is frozen, hence object.__setattr__.
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernel_sizes))
        if self.input_mode not in INPUT_MODES:
            raise ConfigError(f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        for name in ("embed_dim", "num_labels", "num_filters", "hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.kernel_sizes or min(self.kernel_sizes) < 1:
            raise ConfigError(f"kernel_sizes must be positive widths, got {self.kernel_sizes}")
        for name in ("dropout", "embed_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} is a drop probability in [0, 1), got {getattr(self, name)}")
        if self.num_oov < 0:
            raise ConfigError(f"num_oov must be >= 0, got {self.num_oov}")
        if self.input_mode == "vectors":
            if self.vocab_size != 0 or self.num_oov != 0:
                raise ConfigError(
                    "input_mode='vectors' takes token vectors and has no embedding table: "
                    f"set vocab_size=0 and num_oov=0 (got {self.vocab_size}, {self.num_oov})"
                )
            return
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be at least 2 (padding + one word), got {self.vocab_size}")
        if not 0 <= self.padding_idx < self.vocab_size:
            raise ConfigError(f"padding_idx {self.padding_idx} is outside the vocabulary of {self.vocab_size}")
        if self.num_oov and self.trainable_embeddings:
            raise ConfigError("num_oov is for frozen embeddings; with trainable_embeddings=True every row learns")
        if self.num_oov > self.vocab_size - 1:
            raise ConfigError(f"num_oov {self.num_oov} exceeds the {self.vocab_size - 1} non-padding rows")

    @property
    def min_length(self) -> int:
        """Shortest padded batch the model accepts: the widest kernel must fit once."""
        return max(self.kernel_sizes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["kernel_sizes"] = list(self.kernel_sizes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CNNConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, so a newer artifact is not half-read."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown CNN config keys {unknown}; this PatentML knows {sorted(known)}")
        return cls(**dict(data))


class PaperCNN(nn.Module):
    """GloVe/BERT + CNN of Mueller & Stone; ``forward`` returns logits, :meth:`predict_proba` sigmoids.

    Embedding with frozen pretrained vectors (``trainable_embeddings=False``): two tables are summed,
    ``x = frozen[id] + oov[oov_slot[id]]``. ``frozen`` holds the pretrained vectors (zero rows for
    words without one) and gets no gradient; ``oov`` is a small trainable table whose row 0 is a
    fixed zero, and the ``oov_slot`` buffer maps every word *without* a pretrained vector to its own
    row 1..num_oov (every other word to 0). So GloVe words keep their vectors exactly, while the
    unknown-word id and corpus words missing from GloVe learn theirs. With ``trainable_embeddings``
    there is a single ordinary, trainable table.

    Padding never changes the output: padded positions are zeroed, and a convolution window only
    counts if it lies inside the real tokens (others are set to -inf before the max). A sequence
    shorter than a kernel keeps its first window (real tokens + zeros), which is the same however
    wide the batch is padded.
    """

    oov_slot: torch.Tensor  # (vocab,) buffer: row of each token id in the OOV table, 0 = pretrained

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed: nn.Embedding | None = None
        self.oov_embed: nn.Embedding | None = None
        if c.input_mode == "ids":
            self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.padding_idx)
            if not c.trainable_embeddings:
                self.embed.weight.requires_grad_(False)  # a Parameter still: it is counted and saved like Keras'
                if c.num_oov:
                    self.oov_embed = nn.Embedding(c.num_oov + 1, c.embed_dim, padding_idx=0)
            # Filled by load_pretrained() or load_state_dict(); all zero means "every row is in `embed`".
            self.register_buffer("oov_slot", torch.zeros(c.vocab_size, dtype=torch.long))
        self.embed_dropout = nn.Dropout(c.embed_dropout)
        self.convs = nn.ModuleList(nn.Conv1d(c.embed_dim, c.num_filters, k) for k in c.kernel_sizes)
        pooled = c.num_filters * len(c.kernel_sizes)
        # The bias before BatchNorm is redundant but kept: Keras' Dense has one, and the paper's counts include it.
        self.fc = nn.Linear(pooled, c.hidden)
        self.bn = nn.BatchNorm1d(c.hidden)
        self.dropout = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden, c.num_labels)

    # ----------------------------------------------------------------- building

    @classmethod
    def from_pretrained(
        cls,
        vectors: torch.Tensor | np.ndarray,
        known: torch.Tensor | np.ndarray,
        num_labels: int,
        **overrides: Any,
    ) -> PaperCNN:
        """A model whose embedding starts from ``vectors`` (vocab, dim); rows with ``known`` False are learned.

        ``known`` marks the vocabulary rows that have a pretrained vector (e.g. found in GloVe).
        With frozen embeddings the other rows (except padding) get trainable rows, so ``num_oov``
        is derived here rather than asked of the caller.
        """
        vectors_t = torch.as_tensor(vectors, dtype=torch.float32)
        known_t = torch.as_tensor(known, dtype=torch.bool)
        padding_idx = int(overrides.get("padding_idx", 0))
        trainable = bool(overrides.get("trainable_embeddings", False))
        unknown = ~known_t
        if 0 <= padding_idx < unknown.numel():
            unknown[padding_idx] = False
        num_oov = 0 if trainable else int(unknown.sum())
        config = CNNConfig(
            vocab_size=vectors_t.shape[0], embed_dim=vectors_t.shape[1], num_labels=num_labels,
            num_oov=num_oov, **overrides,
        )
        model = cls(config)
        model.load_pretrained(vectors_t, known_t)
        return model

    @torch.no_grad()
    def load_pretrained(self, vectors: torch.Tensor | np.ndarray, known: torch.Tensor | np.ndarray) -> None:
        """Copy pretrained rows in; rows without one start random at the pretrained vectors' scale."""
        c = self.config
        assert self.embed is not None, "input_mode='vectors' has no embedding table to load"
        vectors_t = torch.as_tensor(vectors, dtype=torch.float32)  # (vocab, dim)
        known_t = torch.as_tensor(known, dtype=torch.bool).clone()  # (vocab,)
        if tuple(vectors_t.shape) != (c.vocab_size, c.embed_dim) or tuple(known_t.shape) != (c.vocab_size,):
            raise ConfigError(
                f"pretrained vectors {tuple(vectors_t.shape)} / mask {tuple(known_t.shape)} do not match "
                f"vocab_size={c.vocab_size}, embed_dim={c.embed_dim}"
            )
        known_t[c.padding_idx] = False
        unknown = ~known_t
        unknown[c.padding_idx] = False  # padding is neither pretrained nor learned: it stays zero
        # Random rows as large as GloVe's would be noise; as small as GloVe's they are a fair start.
        scale = float(vectors_t[known_t].std()) if int(known_t.sum()) > 1 else 1.0
        weight = self.embed.weight  # (vocab, dim)
        weight.zero_()
        weight[known_t] = vectors_t[known_t]
        if c.trainable_embeddings:
            weight[unknown] = torch.randn(int(unknown.sum()), c.embed_dim) * scale
            return
        n_unknown = int(unknown.sum())
        if n_unknown != c.num_oov:
            raise ConfigError(
                f"{n_unknown} vocabulary rows have no pretrained vector but config.num_oov={c.num_oov}; "
                "build the model with PaperCNN.from_pretrained()"
            )
        slots = torch.zeros(c.vocab_size, dtype=torch.long)  # (vocab,)
        slots[unknown] = torch.arange(1, n_unknown + 1)
        self.oov_slot.copy_(slots)
        if self.oov_embed is not None:
            self.oov_embed.weight[1:] = torch.randn(n_unknown, c.embed_dim) * scale

    @classmethod
    def from_config_dict(cls, data: Mapping[str, Any]) -> PaperCNN:
        """An untrained model of a saved config; load its weights with ``load_state_dict``."""
        return cls(CNNConfig.from_dict(data))

    def to_config_dict(self) -> dict[str, Any]:
        """JSON-safe config, stored beside the weights in an artifact."""
        return self.config.to_dict()

    def count_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters; frozen embeddings count unless ``trainable_only`` (the paper counts them)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ----------------------------------------------------------------- forward

    def _embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Token ids (batch, seq) -> vectors (batch, seq, dim), or pass precomputed vectors through."""
        c = self.config
        if self.embed is None:
            assert inputs.dim() == 3 and inputs.size(-1) == c.embed_dim, (
                f"input_mode='vectors' expects (batch, seq, {c.embed_dim}) floats, got {tuple(inputs.shape)}"
            )
            return inputs  # (batch, seq, dim)
        assert inputs.dim() == 2 and not inputs.is_floating_point(), (
            f"input_mode='ids' expects (batch, seq) integer ids, got {tuple(inputs.shape)} {inputs.dtype}"
        )
        x = self.embed(inputs)  # (batch, seq, dim)
        if self.oov_embed is not None:
            x = x + self.oov_embed(self.oov_slot[inputs])  # (batch, seq, dim); zero for pretrained words
        return x

    def features(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None,
                 return_positions: bool = False) -> Any:
        """Max-pooled convolution features (batch, len(kernel_sizes) * num_filters), before the dense layer.

        ``lengths`` (batch,) counts the real tokens of each right-padded row. Without it: ids mode
        counts the non-padding ids; vectors mode treats every position as real. ``return_positions``
        also returns where each feature's max was found (batch, features): the first token of the
        window that won the pooling (explanations name those n-grams).
        """
        c = self.config
        batch, seq = inputs.shape[0], inputs.shape[1]
        assert seq >= c.min_length, (
            f"sequences are padded to {seq} positions but the widest kernel needs {c.min_length}: "
            "pad with patentml.text.pad_batch(..., min_length=config.min_length)"
        )
        if lengths is None:
            if self.embed is not None:
                lengths = (inputs != c.padding_idx).sum(dim=1)  # (batch,)
            else:
                lengths = torch.full((batch,), seq, dtype=torch.long)  # (batch,)
        lengths = lengths.to(device=inputs.device, dtype=torch.long)  # (batch,)
        positions = torch.arange(seq, device=inputs.device)  # (seq,)
        real = positions[None, :] < lengths[:, None]  # (batch, seq)

        x = self._embed(inputs)  # (batch, seq, dim)
        # Zero padded positions: cached BERT states there are not zero, and only zeros make the
        # short-sequence fallback window below independent of how far the batch is padded.
        x = x * real.unsqueeze(-1).to(x.dtype)  # (batch, seq, dim)
        x = self.embed_dropout(x)  # (batch, seq, dim)
        x = x.transpose(1, 2)  # (batch, dim, seq): Conv1d convolves over the last axis

        pooled, winners = [], []
        for k, conv in zip(c.kernel_sizes, self.convs):
            h = conv(x)  # (batch, filters, seq - k + 1): output t covers tokens t .. t+k-1
            # Windows fully inside the real tokens start at 0 .. length-k; a sequence shorter than
            # k keeps window 0, so every row has at least one window and the max is finite.
            last_start = (lengths - k).clamp(min=0)  # (batch,)
            valid = positions[: h.size(-1)][None, :] <= last_start[:, None]  # (batch, seq - k + 1)
            # Adding a (batch, 1, windows) 0/-inf row costs a fifth of masked_fill's copy on CPU and gives
            # the same maxima (h + 0 is h; the ReLU below makes -0.0 and 0.0 equal).
            bias = torch.zeros(valid.shape, dtype=h.dtype, device=h.device).masked_fill_(~valid, float("-inf"))
            h = h + bias.unsqueeze(1)  # (batch, filters, seq - k + 1)
            if return_positions:
                best, where = h.max(dim=-1)  # (batch, filters) each
                pooled.append(best)
                winners.append(where)
            else:
                pooled.append(h.amax(dim=-1))  # (batch, filters)
        z = torch.cat(pooled, dim=1)  # (batch, kernels * filters)
        # ReLU after the max equals max after ReLU (ReLU is monotone) and touches (batch, filters) only.
        if return_positions:
            return F.relu(z), torch.cat(winners, dim=1)  # (batch, kernels * filters) each
        return F.relu(z)  # (batch, kernels * filters)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, num_labels) for ids (batch, seq) or vectors (batch, seq, dim); no sigmoid here."""
        return self.head(self.features(inputs, lengths))  # (batch, num_labels)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_labels) from pooled features (batch, kernels * filters)."""
        z = self.fc(z)  # (batch, hidden)
        z = self.bn(z)  # (batch, hidden)
        z = F.relu(z)  # (batch, hidden)
        z = self.dropout(z)  # (batch, hidden)
        return self.out(z)  # (batch, num_labels)

    def window_effects(self, inputs: torch.Tensor, length: int, labels: list[int]) -> list[list[tuple[int, int, float]]]:
        """For one sequence (1, seq[, dim]) of ``length`` real tokens: per label index, the windows
        ``(start, width, effect)`` that won the max-pooling, with a positive effect on the label's
        logit, strongest first. The effect of a pooled feature is its value times the logit's
        gradient with respect to it (gradient x input), summed over the filters that chose the window.
        """
        self.eval()
        with torch.no_grad():
            z, where = self.features(inputs, torch.tensor([length]), return_positions=True)  # (1, features) each
        width = np.repeat(np.asarray(self.config.kernel_sizes), self.config.num_filters)  # (features,)
        z = z.detach().requires_grad_(True)
        out = []
        with torch.enable_grad():
            logits = self.head(z)[0]  # (labels,)
            for label in labels:
                (grad,) = torch.autograd.grad(logits[label], z, retain_graph=True)
                effect = (z * grad).detach()[0].numpy()  # (features,): zero where the ReLU closed
                windows: dict[tuple[int, int], float] = {}
                for f in np.flatnonzero(effect):
                    key = (int(where[0, f]), int(width[f]))
                    windows[key] = windows.get(key, 0.0) + float(effect[f])
                out.append(sorted(((s, k, v) for (s, k), v in windows.items() if v > 0), key=lambda w: -w[2]))
        return out

    @torch.no_grad()
    def predict_proba(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Per-label probabilities (batch, num_labels), always in eval mode (BatchNorm statistics, no dropout)."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self(inputs, lengths))  # (batch, num_labels)
        finally:
            self.train(was_training)


class EncoderCNN(nn.Module):
    """A BERT-family encoder feeding its token vectors to the paper's CNN (BERT+CNN fine-tuning)."""

    def __init__(self, encoder: nn.Module, cnn: PaperCNN) -> None:
        super().__init__()
        self.encoder = encoder
        self.cnn = cnn

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(input_ids.size(1), device=input_ids.device)[None, :] < lengths[:, None]).long()
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (batch, seq, dim)
        return self.cnn(hidden.float(), lengths)  # (batch, labels)


__all__ = ["CNNConfig", "EncoderCNN", "INPUT_MODES", "PaperCNN"]
