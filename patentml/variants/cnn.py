"""GloVe+CNN and BERT+CNN (paper section 4): token streams -> compact on-disk arrays -> the paper's CNN.

Training data arrives as a stream from Postgres and is written once per run (GloVe ids) or once per
snapshot (frozen BERT token vectors, shared by every run on that snapshot) into flat memory-mapped
files, so memory stays flat as the corpus grows. Batches are bucketed by length and padded to their
own longest sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from patentml.artifact import load_arrays, save_arrays
from patentml.exceptions import ConfigError
from patentml.nn.cnn import CNNConfig, PaperCNN
from patentml.text import Vocabulary, length_bucketed_batches, pad_batch, tokenize
from patentml.variants.base import Backend, Corpus, EpochLog, FitContext, label_matrix

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
VOCAB_FILE = "vocabulary.json"
CNN_CONFIG_FILE = "cnn_config.json"
ENCODER_DIR = "encoder"

#: Paper defaults (section 4.3/4.4), plus the knobs issue-level tuning uses; paper values by default.
CNN_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 64,
    "lr": 1e-3,
    "loss": "wbce",
    "alpha": 2.0,
    "label_smoothing": 0.0,
    "num_filters": 512,
    "kernel_sizes": [2, 3, 4, 5],
    "hidden": 512,
    "dropout": 0.5,
    "embed_dropout": 0.0,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "patience": 3,
    "early_stop_metric": "f1",
    "max_tokens": 250,
    "eval_batch_size": 256,
}


# --- flat on-disk splits ------------------------------------------------------------------------


@dataclass
class FlatSplit:
    """A split as flat arrays: token rows (ids or vectors) with offsets, and label indices with offsets."""

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

    def targets(self, rows: Sequence[int]) -> torch.Tensor:
        y = torch.zeros(len(rows), self.n_labels)  # (batch, labels)
        for r, i in enumerate(rows):
            y[r, torch.from_numpy(self.label_idx[self.label_offsets[i] : self.label_offsets[i + 1]].astype(np.int64))] = 1.0
        return y

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

    def batches(
        self, batch_size: int, min_length: int, shuffle: bool, seed: int = 0
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        for rows in length_bucketed_batches(self.lengths.tolist(), batch_size, shuffle=shuffle, seed=seed):
            x, lengths = self.inputs(rows, min_length)
            yield rows, x, lengths

    @classmethod
    def open(cls, folder: Path) -> "FlatSplit":
        meta = json.loads((folder / "meta.json").read_text())
        tokens = np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r", shape=tuple(meta["shape"]))
        return cls(
            tokens=tokens,
            offsets=np.load(folder / "offsets.npy"),
            label_idx=np.load(folder / "label_idx.npy"),
            label_offsets=np.load(folder / "label_offsets.npy"),
            n_labels=int(meta["n_labels"]),
        )


def write_flat_split(
    folder: Path,
    corpus: Corpus,
    labels: Sequence[str],
    encode: Callable[[list[tuple[str, str, list[str]]]], list[np.ndarray]],
    dtype: str,
    dim: int | None = None,
    chunk: int = 256,
    progress: bool = False,
    desc: str = "encode",
) -> FlatSplit:
    """Stream a corpus through ``encode`` (chunks of docs -> token arrays) into ``folder``; atomic."""
    from tqdm import tqdm

    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    index = {l: i for i, l in enumerate(labels)}
    offsets, label_offsets, label_idx = [0], [0], []
    n_tokens = 0
    with open(tmp / "tokens.bin", "wb") as out:
        buf: list[tuple[str, str, list[str]]] = []

        def flush() -> None:
            nonlocal n_tokens
            for doc, arr in zip(buf, encode(buf)):
                out.write(np.ascontiguousarray(arr, dtype=dtype).tobytes())
                n_tokens += arr.shape[0]
                offsets.append(n_tokens)
                ids = [index[l] for l in doc[2] if l in index]
                label_idx.extend(ids)
                label_offsets.append(len(label_idx))
            buf.clear()

        for doc in tqdm(corpus, desc=desc, unit=" doc", disable=not progress, total=len(corpus), mininterval=1):
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
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return FlatSplit.open(folder)


# --- the shared training loop -------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("PATENTML_DEVICE=cuda but no CUDA device is available")
    return torch.device(name)


def _valid_scores(predict: Callable[[list[int], torch.Tensor, torch.Tensor], torch.Tensor], split: FlatSplit,
                  batch_size: int, min_length: int) -> np.ndarray:
    scores = np.zeros((len(split), split.n_labels), dtype=np.float32)
    for rows, x, lengths in split.batches(batch_size, min_length, shuffle=False):
        scores[rows] = predict(rows, x, lengths).float().cpu().numpy()
    return scores


class _CNNBackend(Backend):
    """The loop both CNN variants share: Adam, (weighted) BCE, early stopping on a validation metric."""

    DEFAULTS = dict(CNN_DEFAULTS)
    model: nn.Module | None = None

    def n_params(self) -> int:
        return 0 if self.model is None else sum(p.numel() for p in self.model.parameters())

    def _cnn_overrides(self) -> dict[str, Any]:
        p = self.params
        return {
            "num_filters": int(p["num_filters"]),
            "kernel_sizes": tuple(int(k) for k in p["kernel_sizes"]),
            "hidden": int(p["hidden"]),
            "dropout": float(p["dropout"]),
            "embed_dropout": float(p["embed_dropout"]),
        }

    def _param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [q for q in model.parameters() if q.requires_grad]}]

    def _id_splits(self, train: Corpus, valid: Corpus, ctx: FitContext,
                   encode: Callable[[list[tuple[str, str, list[str]]]], list[np.ndarray]]) -> list[FlatSplit]:
        """Train and validation token ids written once per run into ``work_dir/data``."""
        return [write_flat_split(ctx.work_dir / "data" / name, corpus, self.labels, encode, "int32",
                                 progress=ctx.progress, desc=f"encode {name}")
                for name, corpus in (("train", train), ("valid", valid))]

    def _train_loop(self, model: nn.Module, train: FlatSplit, valid: FlatSplit, ctx: FitContext,
                    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        from tqdm import tqdm

        from patentml.losses import make_loss
        from patentml.metrics import at_k, choose_threshold

        p = self.params
        device = _device(ctx.device)
        model.to(device)
        torch.manual_seed(ctx.seed)
        loss_fn = make_loss(p["loss"], alpha=float(p["alpha"]), label_smoothing=float(p["label_smoothing"]))
        optimizer = torch.optim.Adam(self._param_groups(model), lr=float(p["lr"]),
                                     weight_decay=float(p["weight_decay"]))
        epochs, batch_size = int(p["epochs"]), int(p["batch_size"])
        steps_per_epoch = math.ceil(len(train) / batch_size)
        scheduler = _scheduler(optimizer, p["lr_schedule"], epochs * steps_per_epoch)
        use_amp = device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        min_length = max(int(k) for k in p["kernel_sizes"])
        metric = p["early_stop_metric"]
        if metric not in ("f1", "p_at_1", "loss"):
            raise ConfigError(f"early_stop_metric must be f1, p_at_1 or loss, got {metric!r}")

        ckpt_path, best_path = ctx.work_dir / "checkpoint.pt", ctx.work_dir / "best.safetensors"
        start_epoch, best_score, bad_epochs = 0, -math.inf, 0
        if ctx.resume and ckpt_path.exists():
            state = torch.load(ckpt_path, map_location=device, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            start_epoch, best_score, bad_epochs = int(state["epoch"]), float(state["best_score"]), int(state["bad_epochs"])
            log.info("Resuming from %s at epoch %d", ckpt_path, start_epoch + 1)

        y_valid = np.zeros((len(valid), valid.n_labels), dtype=bool)
        for i in range(len(valid)):
            y_valid[i, valid.label_idx[valid.label_offsets[i] : valid.label_offsets[i + 1]]] = True

        def predict(rows: list[int], x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                return torch.sigmoid(forward(x.to(device, non_blocking=True), lengths.to(device)))

        for epoch in range(start_epoch, epochs):
            model.train()
            started, total, seen = time.perf_counter(), 0.0, 0
            bar = tqdm(train.batches(batch_size, min_length, shuffle=True, seed=ctx.seed * 1000 + epoch),
                       total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", unit=" batch",
                       disable=not ctx.progress, mininterval=1)
            for rows, x, lengths in bar:
                if len(rows) < 2:
                    continue  # BatchNorm cannot train on a single example
                y = train.targets(rows).to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = forward(x.to(device, non_blocking=True), lengths.to(device))
                    loss = loss_fn(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                total += float(loss.detach()) * len(rows)
                seen += len(rows)
                bar.set_postfix(loss=f"{total / seen:.4f}", pps=f"{seen / (time.perf_counter() - started):.0f}")
            train_seconds = time.perf_counter() - started
            model.eval()
            with torch.no_grad():
                scores = _valid_scores(predict, valid, int(p["eval_batch_size"]), min_length)
            valid_loss = float(loss_fn(torch.logit(torch.from_numpy(scores).clamp(1e-7, 1 - 1e-7)),
                                       torch.from_numpy(y_valid.astype(np.float32))))
            _, valid_f1 = choose_threshold(y_valid, scores, keep_top=True)
            valid_p1 = at_k(y_valid, scores, ks=(1,))["p@1"]
            score = {"f1": valid_f1, "p_at_1": valid_p1, "loss": -valid_loss}[metric]
            if score > best_score + 1e-6:
                best_score, bad_epochs = score, 0
                save_arrays(best_path, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
            else:
                bad_epochs += 1
            _atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "epoch": epoch + 1,
                    "best_score": best_score,
                    "bad_epochs": bad_epochs,
                },
                ckpt_path,
            )
            ctx.on_epoch(EpochLog(epoch + 1, total / max(seen, 1), valid_loss, valid_f1, valid_p1,
                                  time.perf_counter() - started, seen / max(train_seconds, 1e-9)))
            log.info("epoch %d: train loss %.4f, valid loss %.4f, valid F1 %.4f, P@1 %.4f",
                     epoch + 1, total / max(seen, 1), valid_loss, valid_f1, valid_p1)
            if bad_epochs >= int(p["patience"]):
                log.info("Early stopping: no better validation %s for %d epochs", metric, bad_epochs)
                break
        if best_path.exists():
            best = load_arrays(best_path)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in best.items()})
        model.to("cpu").eval()


def _scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int) -> Any:
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total_steps, 1)
        )
    raise ConfigError(f"lr_schedule must be constant, cosine or onecycle, got {name!r}")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --- GloVe + CNN --------------------------------------------------------------------------------


class GloveCNN(_CNNBackend):
    """GloVe word vectors (frozen by default, as the paper) + the paper's CNN."""

    name = "glove"
    DEFAULTS = {
        **CNN_DEFAULTS,
        "glove_path": None,
        "min_count": 1,
        "max_vocab": None,
        "trainable_embeddings": False,
        "embed_lr": None,
        #: Without GloVe (``glove_path: "random"`` or ``"none"``), embeddings start random at this size
        #: (tests, ablations); ``None`` means the packaged GloVe 6B 50d.
        "embed_dim": 50,
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        self.vocab: Vocabulary | None = None

    def _param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        embed_lr = self.params["embed_lr"]
        if embed_lr is None or not self.params["trainable_embeddings"]:
            return super()._param_groups(model)
        embed = [q for n, q in model.named_parameters() if n.startswith("embed.") and q.requires_grad]
        rest = [q for n, q in model.named_parameters() if not n.startswith("embed.") and q.requires_grad]
        return [{"params": rest}, {"params": embed, "lr": float(embed_lr)}]

    def _encode(self, docs: list[tuple[str, str, list[str]]]) -> list[np.ndarray]:
        assert self.vocab is not None
        return [np.asarray(self.vocab.encode_text(text) or [1], dtype=np.int32) for _, text, _ in docs]

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        p = self.params
        max_tokens = int(p["max_tokens"])
        self.vocab = Vocabulary.build(
            (tokenize(text, max_tokens) for _, text, _ in train),
            min_count=int(p["min_count"]),
            max_size=None if p["max_vocab"] is None else int(p["max_vocab"]),
            max_length=max_tokens,
        )
        if isinstance(p["glove_path"], str) and p["glove_path"].lower() in ("none", "random"):
            vectors = np.random.default_rng(ctx.seed).normal(0, 0.3, (len(self.vocab), int(p["embed_dim"])))
            known = np.ones(len(self.vocab), dtype=bool)
        else:
            from patentml.embeddings import glove_matrix

            vectors, known = glove_matrix(self.vocab.tokens, p["glove_path"])
        log.info("Vocabulary: %d words, %d (%.1f%%) in GloVe", len(self.vocab), int(known.sum()),
                 100.0 * known.mean())
        overrides = self._cnn_overrides() | {"trainable_embeddings": bool(p["trainable_embeddings"])}
        torch.manual_seed(ctx.seed)
        model = PaperCNN.from_pretrained(vectors, known, len(self.labels), **overrides)
        self.model = model
        tr, va = self._id_splits(train, valid, ctx, self._encode)
        self._train_loop(model, tr, va, ctx, lambda x, lengths: model(x, lengths))

    def predict_scores(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        assert self.vocab is not None and self.model is not None, "fit or load the model first"
        model = self.model
        model.eval()
        ids = [self.vocab.encode_text(t) or [1] for t in texts]
        min_length = max(int(k) for k in self.params["kernel_sizes"])
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        order = np.argsort([len(i) for i in ids], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                x, lengths = pad_batch([ids[i] for i in rows], min_length=min_length)  # (batch, seq)
                out[rows] = torch.sigmoid(model(x, lengths)).numpy()
        return out

    def _save(self, folder: Path) -> None:
        assert self.vocab is not None and isinstance(self.model, PaperCNN)
        (folder / VOCAB_FILE).write_text(json.dumps(self.vocab.to_dict()))
        (folder / CNN_CONFIG_FILE).write_text(json.dumps(self.model.to_config_dict()))
        save_arrays(folder / WEIGHTS_FILE, {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()})

    def _load(self, folder: Path) -> None:
        self.vocab = Vocabulary.from_dict(json.loads((folder / VOCAB_FILE).read_text()))
        model = PaperCNN.from_config_dict(json.loads((folder / CNN_CONFIG_FILE).read_text()))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in load_arrays(folder / WEIGHTS_FILE).items()})
        self.model = model.eval()


# --- BERT + CNN ---------------------------------------------------------------------------------


class EncoderCNN(nn.Module):
    """A BERT-family encoder feeding its token vectors to the paper's CNN (fine-tuning path)."""

    def __init__(self, encoder: nn.Module, cnn: PaperCNN) -> None:
        super().__init__()
        self.encoder = encoder
        self.cnn = cnn

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(input_ids.size(1), device=input_ids.device)[None, :] < lengths[:, None]).long()
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (batch, seq, dim)
        return self.cnn(hidden.float(), lengths)  # (batch, labels)


class BertCNN(_CNNBackend):
    """Contextual token vectors from a BERT-family encoder + the paper's CNN; frozen (cached) or fine-tuned."""

    name = "bert"
    DEFAULTS = {
        **CNN_DEFAULTS,
        "bert_model": None,
        "fine_tune": False,
        "bert_lr": 2e-5,
        "bert_max_length": 250,
        "encode_batch_size": 32,
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        self.tokenizer: Any = None
        self.encoder: nn.Module | None = None
        self.cnn: PaperCNN | None = None

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=int(self.params["bert_max_length"]),
                             add_special_tokens=True)
        return [list(ids) for ids in enc["input_ids"]]

    @torch.inference_mode()
    def _hidden(self, token_ids: list[list[int]]) -> list[np.ndarray]:
        """Last-layer token vectors of each sequence, computed in length-sorted batches."""
        assert self.encoder is not None
        out: list[np.ndarray | None] = [None] * len(token_ids)
        order = np.argsort([len(t) for t in token_ids], kind="stable")
        bs = int(self.params["encode_batch_size"])
        for start in range(0, len(order), bs):
            rows = order[start : start + bs]
            lengths = [len(token_ids[i]) for i in rows]
            x = torch.zeros(len(rows), max(lengths), dtype=torch.long)
            for r, i in enumerate(rows):
                x[r, : lengths[r]] = torch.as_tensor(token_ids[i])
            mask = (torch.arange(x.size(1))[None, :] < torch.tensor(lengths)[:, None]).long()
            hidden = self.encoder(input_ids=x, attention_mask=mask).last_hidden_state  # (batch, seq, dim)
            for r, i in enumerate(rows):
                out[i] = hidden[r, : lengths[r]].float().numpy()
        return out  # type: ignore[return-value]

    def _encode_vectors(self, docs: list[tuple[str, str, list[str]]]) -> list[np.ndarray]:
        return self._hidden(self._tokenize([text for _, text, _ in docs]))

    def _encode_ids(self, docs: list[tuple[str, str, list[str]]]) -> list[np.ndarray]:
        return [np.asarray(t, dtype=np.int32) for t in self._tokenize([text for _, text, _ in docs])]

    def _cache_folder(self, ctx: FitContext, split: str) -> Path:
        """Frozen token vectors depend on the encoder, its length cap and the data: one cache per snapshot."""
        from patentml.embeddings import resolve_encoder

        key = json.dumps([resolve_encoder(self.params["bert_model"]), int(self.params["bert_max_length"]),
                          ctx.cache_key, split, self.labels])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        root = ctx.cache_dir or (ctx.work_dir / "cache")
        return root / "bert-vectors" / f"{ctx.cache_key or 'run'}-{split}-{digest}"

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        from patentml.embeddings import load_encoder

        p = self.params
        self.tokenizer, self.encoder = load_encoder(p["bert_model"])
        dim = int(self.encoder.config.hidden_size)
        torch.manual_seed(ctx.seed)
        self.cnn = PaperCNN(CNNConfig(vocab_size=0, embed_dim=dim, num_labels=len(self.labels),
                                      input_mode="vectors", **self._cnn_overrides()))
        if p["fine_tune"]:
            model = EncoderCNN(self.encoder, self.cnn)
            self.model = model
            tr, va = self._id_splits(train, valid, ctx, self._encode_ids)
            self._train_loop(model, tr, va, ctx, lambda x, lengths: model(x, lengths))
            return
        for q in self.encoder.parameters():
            q.requires_grad_(False)
        self.model = self.cnn
        splits = []
        for name, corpus in (("train", train), ("valid", valid)):
            folder = self._cache_folder(ctx, name)
            if (folder / "meta.json").exists():
                log.info("Reusing cached %s token vectors in %s", name, folder)
                splits.append(FlatSplit.open(folder))
            else:
                splits.append(write_flat_split(folder, corpus, self.labels, self._encode_vectors, "float16",
                                               dim=dim, chunk=512, progress=ctx.progress,
                                               desc=f"BERT vectors {name}"))
        cnn = self.cnn
        self._train_loop(cnn, splits[0], splits[1], ctx, lambda x, lengths: cnn(x, lengths))

    def _param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        if not isinstance(model, EncoderCNN):
            return super()._param_groups(model)
        return [
            {"params": list(model.cnn.parameters())},
            {"params": list(model.encoder.parameters()), "lr": float(self.params["bert_lr"])},
        ]

    def predict_scores(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        assert self.cnn is not None and self.encoder is not None, "fit or load the model first"
        self.cnn.eval()
        self.encoder.eval()
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        min_length = max(int(k) for k in self.params["kernel_sizes"])
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                hidden = self._hidden(self._tokenize(texts[start : start + batch_size]))
                lengths = [h.shape[0] for h in hidden]
                x = torch.zeros(len(hidden), max(max(lengths), min_length), hidden[0].shape[1])
                for r, h in enumerate(hidden):
                    x[r, : lengths[r]] = torch.from_numpy(h)
                out[start : start + len(hidden)] = torch.sigmoid(self.cnn(x, torch.tensor(lengths))).numpy()
        return out

    def n_params(self) -> int:
        n = 0 if self.cnn is None else sum(q.numel() for q in self.cnn.parameters())
        return n + (0 if self.encoder is None else sum(q.numel() for q in self.encoder.parameters()))

    def _save(self, folder: Path) -> None:
        assert self.cnn is not None and self.encoder is not None
        (folder / CNN_CONFIG_FILE).write_text(json.dumps(self.cnn.to_config_dict()))
        save_arrays(folder / WEIGHTS_FILE, {k: v.detach().cpu().numpy() for k, v in self.cnn.state_dict().items()})
        # Tokenizer files always travel with the model; encoder weights only when fine-tuned
        # (a frozen encoder is referenced by name/path, as the model config records).
        enc_dir = folder / ENCODER_DIR
        self.tokenizer.save_pretrained(enc_dir)
        if self.params["fine_tune"]:
            self.encoder.save_pretrained(enc_dir, safe_serialization=True)

    def _load(self, folder: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        from patentml.embeddings import load_encoder

        enc_dir = folder / ENCODER_DIR
        if self.params["fine_tune"]:
            self.tokenizer = AutoTokenizer.from_pretrained(enc_dir, local_files_only=True)
            self.encoder = AutoModel.from_pretrained(enc_dir, local_files_only=True).eval()
        else:
            _, self.encoder = load_encoder(self.params["bert_model"])
            self.tokenizer = AutoTokenizer.from_pretrained(enc_dir, local_files_only=True)
        cnn = PaperCNN.from_config_dict(json.loads((folder / CNN_CONFIG_FILE).read_text()))
        cnn.load_state_dict({k: torch.from_numpy(v) for k, v in load_arrays(folder / WEIGHTS_FILE).items()})
        self.cnn = cnn.eval()
        self.model = self.cnn
