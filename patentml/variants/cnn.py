"""GloVe+CNN and BERT+CNN (paper section 4): token streams -> flat on-disk splits -> the paper's CNN.

What is model-specific lives here: the vocabulary or tokenizer, the encoder, the parameter groups and
the artifact files. The data format is :mod:`patentml.nn.data`, the loop :mod:`patentml.nn.loop`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from patentml.text import MAX_TOKENS
from patentml.variants.base import TOKEN_VECTORS, Backend, Corpus, Doc, FitContext

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from patentml.nn.data import FlatSplit

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
    "max_tokens": MAX_TOKENS,
    "eval_batch_size": 256,
}


class _CNNBackend(Backend):
    """What both CNN variants share: the paper's CNN, trained by the torch loop with (weighted) BCE."""

    has_loss = True
    needs_torch = True
    explains = True
    DEFAULTS = dict(CNN_DEFAULTS)
    model: "nn.Module | None" = None

    def n_params(self) -> int:
        return 0 if self.model is None else sum(p.numel() for p in self.model.parameters())

    @property
    def min_length(self) -> int:
        return max(int(k) for k in self.params["kernel_sizes"])

    def _cnn_overrides(self) -> dict[str, Any]:
        p = self.params
        return {"num_filters": int(p["num_filters"]), "kernel_sizes": tuple(int(k) for k in p["kernel_sizes"]),
                "hidden": int(p["hidden"]), "dropout": float(p["dropout"]), "embed_dropout": float(p["embed_dropout"])}

    def _param_groups(self, model: "nn.Module") -> list[dict[str, Any]]:
        return [{"params": [q for q in model.parameters() if q.requires_grad]}]

    def _id_splits(self, train: Corpus, valid: Corpus, ctx: FitContext,
                   encode: Callable[[list[Doc]], list["np.ndarray"]]) -> list["FlatSplit"]:
        """Train and validation token ids written once per run into ``work_dir/data``."""
        from patentml.nn.data import write_flat_split

        return [write_flat_split(ctx.work_dir / "data" / name, corpus, self.labels, encode, "int32",
                                 progress=ctx.progress, desc=f"encode {name}")
                for name, corpus in (("train", train), ("valid", valid))]

    def _train(self, model: "nn.Module", train: "FlatSplit", valid: "FlatSplit", ctx: FitContext) -> None:
        """The paper's recipe: Adam, (weighted) BCE, early stopping on a validation metric, a checkpoint per epoch."""
        import numpy as np

        from patentml.losses import make_loss
        from patentml.nn.loop import LoopSettings, TorchLoop

        p = self.params
        settings = LoopSettings(epochs=int(p["epochs"]), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]),
                                lr_schedule=p["lr_schedule"], patience=int(p["patience"]),
                                early_stop_metric=p["early_stop_metric"], min_batch=2)
        loop = TorchLoop(model, settings, ctx)
        batch_size, min_length = int(p["batch_size"]), self.min_length

        def batches(epoch: int) -> Any:
            for rows, x, lengths in train.batches(batch_size, min_length, shuffle=True, seed=ctx.seed * 1000 + epoch):
                yield (x, lengths), train.targets(rows)

        def forward(inputs: Any) -> Any:
            x, lengths = inputs
            return model(x.to(loop.device, non_blocking=True), lengths.to(loop.device))

        def valid_scores() -> np.ndarray:
            import torch

            scores = np.zeros((len(valid), valid.n_labels), dtype=np.float32)
            for rows, x, lengths in valid.batches(int(p["eval_batch_size"]), min_length, shuffle=False):
                with loop.autocast():
                    scores[rows] = torch.sigmoid(forward((x, lengths))).float().cpu().numpy()
            return scores

        loop.run(param_groups=self._param_groups(model), batches=batches,
                 loss_fn=make_loss(p["loss"], alpha=float(p["alpha"]), label_smoothing=float(p["label_smoothing"])),
                 steps_per_epoch=math.ceil(len(train) / batch_size), forward=forward, valid_scores=valid_scores,
                 y_valid=valid.truth())

    # -- explanations ------------------------------------------------------------------------
    def _explain_input(self, text: str) -> tuple[Any, list[str]]:
        """The CNN's input for one text, padded for the widest kernel (1, seq[, dim]), and its tokens."""
        raise NotImplementedError

    def _ngram(self, tokens: list[str], start: int, width: int) -> str:
        """The text of the window of ``width`` tokens at ``start``."""
        return " ".join(tokens[start : start + width])

    def explain(self, texts: Sequence[str], labels_per_text: Sequence[Sequence[str]],
                top_n: int = 5) -> list[dict[str, dict[str, Any]]]:
        """The n-grams whose windows won the max-pooling, by their effect on a label's logit (gradient x
        input on the pooled features, summed per window: :meth:`PaperCNN.window_effects`)."""
        index = {label: j for j, label in enumerate(self.labels)}
        out = []
        for text, labels in zip(texts, labels_per_text):
            x, tokens = self._explain_input(text)
            effects = self._cnn().window_effects(x, len(tokens), [index[label] for label in labels])
            out.append({label: {"method": "ngrams", "ngrams": [
                {"ngram": self._ngram(tokens, start, k), "position": start, "weight": round(v, 4)}
                for start, k, v in windows[:top_n]]} for label, windows in zip(labels, effects)})
        return out

    def _cnn(self) -> Any:
        return self.model

    def _load_cnn(self, folder: Path) -> Any:
        import torch

        from patentml.artifact import load_arrays
        from patentml.nn.cnn import PaperCNN

        model = PaperCNN.from_config_dict(json.loads((folder / CNN_CONFIG_FILE).read_text()))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in load_arrays(folder / WEIGHTS_FILE).items()})
        return model.eval()

    def _save_cnn(self, folder: Path, cnn: Any) -> None:
        from patentml.artifact import save_arrays

        (folder / CNN_CONFIG_FILE).write_text(json.dumps(cnn.to_config_dict()))
        save_arrays(folder / WEIGHTS_FILE, {k: v.detach().cpu().numpy() for k, v in cnn.state_dict().items()})


class GloveCNN(_CNNBackend):
    """GloVe word vectors (frozen by default, as the paper) + the paper's CNN."""

    name = "glove"
    predict_batch = 64  # convolution outputs of a small batch stay in the core's cache (benchmarks/predict.py)
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
        from patentml.text import Vocabulary

        self.vocab: Vocabulary | None = None

    def _param_groups(self, model: "nn.Module") -> list[dict[str, Any]]:
        embed_lr = self.params["embed_lr"]
        if embed_lr is None or not self.params["trainable_embeddings"]:
            return super()._param_groups(model)
        embed = [q for n, q in model.named_parameters() if n.startswith("embed.") and q.requires_grad]
        rest = [q for n, q in model.named_parameters() if not n.startswith("embed.") and q.requires_grad]
        return [{"params": rest}, {"params": embed, "lr": float(embed_lr)}]

    def _ids(self, text: str) -> list[int]:
        assert self.vocab is not None
        return self.vocab.encode_text(text) or [1]  # an empty text is one unknown word

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        import numpy as np
        import torch

        from patentml.nn.cnn import PaperCNN
        from patentml.text import Vocabulary, tokenize

        p = self.params
        max_tokens = int(p["max_tokens"])
        self.vocab = Vocabulary.build((tokenize(text, max_tokens) for _, text, _ in train),
                                      min_count=int(p["min_count"]),
                                      max_size=None if p["max_vocab"] is None else int(p["max_vocab"]),
                                      max_length=max_tokens)
        if isinstance(p["glove_path"], str) and p["glove_path"].lower() in ("none", "random"):
            vectors = np.random.default_rng(ctx.seed).normal(0, 0.3, (len(self.vocab), int(p["embed_dim"])))
            known = np.ones(len(self.vocab), dtype=bool)
        else:
            from patentml.embeddings import glove_matrix

            vectors, known = glove_matrix(self.vocab.tokens, p["glove_path"])
        log.info("Vocabulary: %d words, %d (%.1f%%) in GloVe", len(self.vocab), int(known.sum()), 100.0 * known.mean())
        torch.manual_seed(ctx.seed)
        model = PaperCNN.from_pretrained(vectors, known, len(self.labels), **self._cnn_overrides(),
                                         trainable_embeddings=bool(p["trainable_embeddings"]))
        self.model = model
        tr, va = self._id_splits(train, valid, ctx,
                                 lambda docs: [np.asarray(self._ids(text), dtype=np.int32) for _, text, _ in docs])
        self._train(model, tr, va, ctx)

    def _explain_input(self, text: str) -> tuple[Any, list[str]]:
        from patentml.text import pad_batch, tokenize

        x, _ = pad_batch([self._ids(text)], min_length=self.min_length)  # (1, seq)
        return x, tokenize(text, int(self.params["max_tokens"])) or ["<unk>"]

    def predict_scores(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        import numpy as np
        import torch

        from patentml.text import pad_batch

        assert self.vocab is not None and self.model is not None, "fit or load the model first"
        model, batch_size = self.model.eval(), batch_size or self.predict_batch
        ids = [self._ids(t) for t in texts]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        order = np.argsort([len(i) for i in ids], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                x, lengths = pad_batch([ids[i] for i in rows], min_length=self.min_length)  # (batch, seq)
                out[rows] = torch.sigmoid(model(x, lengths)).numpy()
        return out

    def _save(self, folder: Path) -> None:
        assert self.vocab is not None and self.model is not None
        (folder / VOCAB_FILE).write_text(json.dumps(self.vocab.to_dict()))
        self._save_cnn(folder, self.model)

    def _load(self, folder: Path) -> None:
        from patentml.text import Vocabulary

        self.vocab = Vocabulary.from_dict(json.loads((folder / VOCAB_FILE).read_text()))
        self.model = self._load_cnn(folder)


class BertCNN(_CNNBackend):
    """Contextual token vectors from a BERT-family encoder + the paper's CNN; frozen (cached) or fine-tuned."""

    name = "bert"
    predict_batch = 32
    can_fine_tune = True
    caches = (TOKEN_VECTORS,)
    DEFAULTS = {
        **CNN_DEFAULTS,
        "bert_model": None,
        "fine_tune": False,
        "bert_lr": 2e-5,
        "bert_max_length": MAX_TOKENS,
        "encode_batch_size": 32,
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        self.tokenizer: Any = None
        self.encoder: Any = None
        self.cnn: Any = None

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=int(self.params["bert_max_length"]),
                             add_special_tokens=True)
        return [list(ids) for ids in enc["input_ids"]]

    def _hidden(self, token_ids: list[list[int]]) -> list["np.ndarray"]:
        """Last-layer token vectors of each sequence, computed in length-sorted batches."""
        import numpy as np
        import torch

        from patentml.text import pad_batch

        out: list[Any] = [None] * len(token_ids)
        order = np.argsort([len(t) for t in token_ids], kind="stable")
        bs = int(self.params["encode_batch_size"])
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                rows = order[start : start + bs]
                x, lengths = pad_batch([token_ids[i] for i in rows], min_length=1)  # (batch, seq)
                mask = (torch.arange(x.size(1))[None, :] < lengths[:, None]).long()
                hidden = self.encoder(input_ids=x, attention_mask=mask).last_hidden_state  # (batch, seq, dim)
                for r, i in enumerate(rows):
                    out[i] = hidden[r, : int(lengths[r])].float().numpy()
        return out

    def _cache_folder(self, ctx: FitContext, split: str) -> Path:
        """Frozen token vectors depend on the encoder, its length cap and the data: one cache per snapshot."""
        from patentml.embeddings import resolve_encoder

        key = json.dumps([resolve_encoder(self.params["bert_model"]), int(self.params["bert_max_length"]),
                          ctx.cache_key, split, self.labels])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        root = ctx.cache_dir or (ctx.work_dir / "cache")
        return root / "bert-vectors" / f"{ctx.cache_key or 'run'}-{split}-{digest}"

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        import numpy as np
        import torch

        from patentml.embeddings import load_encoder
        from patentml.nn.cnn import CNNConfig, EncoderCNN, PaperCNN
        from patentml.nn.data import FlatSplit, write_flat_split

        p = self.params
        self.tokenizer, self.encoder = load_encoder(p["bert_model"])
        dim = int(self.encoder.config.hidden_size)
        torch.manual_seed(ctx.seed)
        self.cnn = PaperCNN(CNNConfig(vocab_size=0, embed_dim=dim, num_labels=len(self.labels),
                                      input_mode="vectors", **self._cnn_overrides()))
        if p["fine_tune"]:
            self.model = EncoderCNN(self.encoder, self.cnn)
            tr, va = self._id_splits(train, valid, ctx, lambda docs: [
                np.asarray(t, dtype=np.int32) for t in self._tokenize([text for _, text, _ in docs])])
            self._train(self.model, tr, va, ctx)
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
                splits.append(write_flat_split(
                    folder, corpus, self.labels, lambda docs: self._hidden(self._tokenize([t for _, t, _ in docs])),
                    "float16", dim=dim, chunk=512, progress=ctx.progress, desc=f"BERT vectors {name}"))
        self._train(self.cnn, splits[0], splits[1], ctx)

    def _cnn(self) -> Any:
        return self.cnn

    def _explain_input(self, text: str) -> tuple[Any, list[str]]:
        import torch

        ids = self._tokenize([text])[0]
        hidden = self._hidden([ids])[0]  # (seq, dim)
        x = torch.zeros(1, max(len(ids), self.min_length), hidden.shape[1])
        x[0, : len(ids)] = torch.from_numpy(hidden)
        return x, self.tokenizer.convert_ids_to_tokens(ids)

    def _ngram(self, tokens: list[str], start: int, width: int) -> str:
        """The window's word pieces widened to whole words and joined back to text, [CLS]/[SEP] left out."""
        end = start + width
        while start > 0 and tokens[start].startswith("##"):
            start -= 1
        while end < len(tokens) and tokens[end].startswith("##"):
            end += 1
        special = set(self.tokenizer.all_special_tokens)
        return self.tokenizer.convert_tokens_to_string([t for t in tokens[start:end] if t not in special])

    def _param_groups(self, model: "nn.Module") -> list[dict[str, Any]]:
        if not self.params["fine_tune"]:
            return super()._param_groups(model)
        return [{"params": list(self.cnn.parameters())},
                {"params": list(self.encoder.parameters()), "lr": float(self.params["bert_lr"])}]

    def predict_scores(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        import numpy as np
        import torch

        assert self.cnn is not None and self.encoder is not None, "fit or load the model first"
        self.cnn.eval()
        self.encoder.eval()
        batch_size = batch_size or self.predict_batch
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                hidden = self._hidden(self._tokenize(texts[start : start + batch_size]))
                lengths = [h.shape[0] for h in hidden]
                x = torch.zeros(len(hidden), max(max(lengths), self.min_length), hidden[0].shape[1])
                for r, h in enumerate(hidden):
                    x[r, : lengths[r]] = torch.from_numpy(h)
                out[start : start + len(hidden)] = torch.sigmoid(self.cnn(x, torch.tensor(lengths))).numpy()
        return out

    def n_params(self) -> int:
        n = 0 if self.cnn is None else sum(q.numel() for q in self.cnn.parameters())
        return n + (0 if self.encoder is None else sum(q.numel() for q in self.encoder.parameters()))

    def _save(self, folder: Path) -> None:
        assert self.cnn is not None and self.encoder is not None
        self._save_cnn(folder, self.cnn)
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
            self.encoder = AutoModel.from_pretrained(enc_dir, local_files_only=True).eval()
        else:
            _, self.encoder = load_encoder(self.params["bert_model"])
        self.tokenizer = AutoTokenizer.from_pretrained(enc_dir, local_files_only=True)
        self.cnn = self._load_cnn(folder)
        self.model = self.cnn
