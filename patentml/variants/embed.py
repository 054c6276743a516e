"""Backends on sentence vectors of a BERT-family encoder: an MLP (or linear) head, and nearest-neighbour voting.

The encoder and its vector cache are :mod:`patentml.sentence`, the neighbour search :mod:`patentml.knn`,
the loop :mod:`patentml.nn.loop`; what is here is what each model does with the vectors.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from patentml.exceptions import ConfigError
from patentml.text import MAX_TOKENS
from patentml.variants.base import SENTENCE_VECTORS, Backend, Corpus, EpochLog, FitContext, collect

if TYPE_CHECKING:
    import numpy as np

    from patentml.sentence import Encoder, SentenceEncoder

log = logging.getLogger(__name__)

WEIGHTS_FILE = "head.safetensors"
KNN_FILE = "neighbours.safetensors"
KNN_IDS_FILE = "neighbour_ids.json"  # the training patent ids of the kNN memory, row by row (older artifacts lack it)
ENCODER_DIR = "encoder"
ANN_FILE = "neighbours.ann.safetensors"  # the HNSW index of a memory above ``ann_threshold`` rows (no pickle)

#: A split as (sentence vectors, multi-hot labels, texts, patent ids).
EmbeddedSplit = tuple["np.ndarray", "np.ndarray", list[str], list[str]]


class EmbeddingBackend(Backend):
    """Shared by the backends on sentence vectors: the encoder, its settings, its files and the vector cache."""

    needs_torch = True
    caches = (SENTENCE_VECTORS,)
    #: encoder_precision: frozen vectors in "fp32" or "int8" (ONNX dynamic quantisation); int8 cost 0.38 points
    #: of example F1 on the CPC-labelled validation patents (docs/scale.md), more than the 0.3 allowed.
    ENCODER_DEFAULTS: dict[str, Any] = {"bert_model": None, "max_length": 256, "encode_batch_size": 32,
                                        "encoder_precision": "fp32"}

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        #: Computes the vectors: the fast inference encoder, or the torch one while it is being fine-tuned.
        self.encoder: Encoder | None = None
        #: Where fine-tuned encoder weights were loaded from (None: the base encoder of ``bert_model``).
        self.encoder_dir: Path | None = None

    def _source(self) -> str | None:
        return str(self.encoder_dir) if self.encoder_dir is not None else self.params["bert_model"]

    def _encoder(self) -> "Encoder":
        """The encoder of frozen vectors (:func:`patentml.sentence.inference_encoder`)."""
        from patentml.sentence import BUILD_LOCK, inference_encoder

        with BUILD_LOCK:  # prediction's threads ask at once
            if self.encoder is None:
                self.encoder = inference_encoder(self._source(), *self._encoder_args(), tag=self.learned.get("encoder_tag"),
                                                 precision=str(self.params["encoder_precision"]))
        return self.encoder

    def _encoder_args(self) -> tuple[int, int]:
        return int(self.params["max_length"]), int(self.params["encode_batch_size"])

    def _trainable_encoder(self) -> "SentenceEncoder":
        """The torch encoder, for fine-tuning and for saving fine-tuned weights."""
        from patentml.sentence import BUILD_LOCK, SentenceEncoder

        with BUILD_LOCK:
            if not isinstance(self.encoder, SentenceEncoder):
                self.encoder = SentenceEncoder(self._source(), *self._encoder_args(), tag=self.learned.get("encoder_tag"))
        return self.encoder

    def _save_encoder(self, folder: Path) -> None:
        """Tokenizer and pooling into the artifact; the weights too once fine-tuned."""
        fine_tuned = bool(self.learned.get("encoder_tag"))
        (self._trainable_encoder() if fine_tuned else self._encoder()).save(folder / ENCODER_DIR, weights=fine_tuned)

    def _embed_splits(self, train: Corpus, valid: Corpus, ctx: FitContext) -> dict[str, EmbeddedSplit]:
        """(vectors, multi-hot labels, texts) of both splits, vectors from the cache where it has them."""
        from patentml.labels import multi_hot
        from patentml.sentence import embed_corpus

        data = {}
        for name, corpus in (("train", train), ("valid", valid)):
            ids, texts, labels = collect(corpus)
            started = time.perf_counter()
            x, n_new = embed_corpus(self._encoder(), texts, ctx.embedding_cache, ctx.progress)
            log.info("%s: %d embeddings, %d encoded now (%.1f s), %d from the cache", name, len(texts), n_new,
                     time.perf_counter() - started, len(texts) - n_new)
            data[name] = (x, multi_hot(labels, self.labels), texts, ids)
        return data

    def _vectors(self, texts: Sequence[str]) -> "np.ndarray":
        from patentml.sentence import embed_corpus

        return embed_corpus(self._encoder(), list(texts), self.embedding_cache)[0]


class EmbedLinear(EmbeddingBackend):
    """Sentence embeddings + head; the strong cheap peer of the paper's CNNs. Can fine-tune the encoder too."""

    name = "embed-linear"
    can_fine_tune = True
    NO_REASONS = ("the head reads one sentence vector of the whole abstract: no word or phrase has a score of its "
                  "own (the kNN model names the training patents behind a label)")
    LEARNED = ("encoder_tag",)
    DEFAULTS: dict[str, Any] = {
        **EmbeddingBackend.ENCODER_DEFAULTS,
        #: 0 = linear head; > 0 = one hidden layer of this size. On the sample data's validation split
        #: the MLP (1024, dropout 0.3) beats the linear head: F1 56.2 vs 53.6, P@1 65.6 vs 64.0.
        "hidden": 1024,
        "dropout": 0.3,
        "epochs": 60,
        "batch_size": 128,
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "loss": "bce",
        "alpha": 2.0,
        "patience": 8,
        #: Then train the encoder too (pooling + this head), from the frozen-encoder head.
        #: Costly on CPU (about 10 minutes per epoch of 14k abstracts at max_length 128 on 2 cores).
        "fine_tune": False,
        "encoder_lr": 3e-5,
        "fine_tune_epochs": 2,
        "fine_tune_batch_size": 32,
        #: Training batches are cut to this many word pieces (cost); prediction uses ``max_length``.
        "fine_tune_max_length": 128,
        #: "best": the epoch with the best validation F1, the frozen encoder included; "last": the last epoch.
        "fine_tune_select": "best",
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        if self.params["fine_tune_select"] not in ("best", "last"):
            raise ConfigError(f"fine_tune_select must be best or last, got {self.params['fine_tune_select']!r}")
        self.head: Any = None

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        import torch

        from patentml.losses import make_loss
        from patentml.nn.head import Head
        from patentml.nn.loop import LoopSettings, TorchLoop

        p = self.params
        data = self._embed_splits(train, valid, ctx)
        xt, yt = (torch.from_numpy(a) for a in data["train"][:2])
        xv, yv = torch.from_numpy(data["valid"][0]), data["valid"][1] > 0
        torch.manual_seed(ctx.seed)
        head = self.head = Head(xt.shape[1], len(self.labels), int(p["hidden"]), float(p["dropout"]))
        loss_fn = make_loss(p["loss"], float(p["alpha"]))
        bs, gen = int(p["batch_size"]), torch.Generator().manual_seed(ctx.seed)

        def batches(epoch: int) -> Any:
            perm = torch.randperm(len(xt), generator=gen)
            for s in range(0, len(perm), bs):
                rows = perm[s : s + bs]
                yield rows, yt[rows]

        settings = LoopSettings(epochs=int(p["epochs"]), lr=float(p["lr"]), optimizer="adamw",
                                weight_decay=float(p["weight_decay"]), patience=int(p["patience"]), checkpoint=False)
        loop = TorchLoop(head, settings, ctx)
        result = loop.run(
            param_groups=[{"params": list(head.parameters())}], loss_fn=loss_fn, batches=batches,
            steps_per_epoch=-(-len(xt) // bs), forward=lambda rows: head(xt[rows].to(loop.device)),
            valid_scores=lambda: torch.sigmoid(head(xv.to(loop.device))).float().cpu().numpy(), y_valid=yv)
        if p["fine_tune"]:
            self._fine_tune(data["train"], data["valid"], result.best_score, ctx, loss_fn,
                            first_epoch=result.epochs_run + 1)

    def _fine_tune(self, train: EmbeddedSplit, valid: EmbeddedSplit, frozen_f1: float, ctx: FitContext,
                   loss_fn: Any, first_epoch: int) -> None:
        """Train the encoder and the head together from the frozen-encoder head, a few epochs at a small
        learning rate; keep the epoch with the best validation F1, or the frozen encoder if none beats it."""
        import torch

        from patentml.nn.head import EncoderHead
        from patentml.nn.loop import LoopSettings, TorchLoop
        from patentml.text import length_bucketed_batches

        p = self.params
        encoder, head = self._trainable_encoder(), self.head
        _, yt, texts, _ = train
        _, yv, valid_texts, _ = valid
        y, lengths = torch.from_numpy(yt), [len(t) for t in texts]
        bs, epochs, lr = int(p["fine_tune_batch_size"]), int(p["fine_tune_epochs"]), float(p["encoder_lr"])
        model = EncoderHead(encoder.model, head)
        loop = TorchLoop(model, LoopSettings(epochs=epochs, lr=lr, optimizer="adamw", weight_decay=float(p["weight_decay"]),
                                             lr_schedule="linear", patience=epochs + 1, select=p["fine_tune_select"],
                                             clip_grad_norm=1.0, checkpoint=False, stage="fine-tune "), ctx)

        def batches(epoch: int) -> Any:
            for rows in length_bucketed_batches(lengths, bs, shuffle=True, seed=ctx.seed * 1000 + epoch):
                yield rows, y[rows]

        def valid_scores() -> Any:
            vectors = torch.from_numpy(encoder.encode(valid_texts)).to(loop.device)
            return torch.sigmoid(head(vectors)).float().cpu().numpy()

        result = loop.run(
            param_groups=[{"params": list(encoder.model.parameters()), "lr": lr},
                          {"params": list(head.parameters()), "lr": lr * 10}],
            loss_fn=loss_fn, batches=batches, steps_per_epoch=-(-len(texts) // bs),
            forward=lambda rows: head(encoder.pool([texts[i] for i in rows], int(p["fine_tune_max_length"]))),
            valid_scores=valid_scores, y_valid=yv > 0, first_epoch=first_epoch, initial_best=frozen_f1)
        if not result.improved:
            log.info("fine-tuning did not beat the frozen encoder on validation (F1 %.4f); keeping it", frozen_f1)
            self.encoder = None  # reload the base encoder
            return
        # Names the fine-tuned weights in the vector cache; unique per fit.
        self.learned["encoder_tag"] = encoder.tag = "ft-" + uuid.uuid4().hex[:12]

    def predict_scores(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        import torch

        assert self.head is not None, "fit or load the model first"
        with torch.inference_mode():
            return torch.sigmoid(self.head(torch.from_numpy(self._vectors(texts)))).numpy()

    def n_params(self) -> int:
        return 0 if self.head is None else sum(q.numel() for q in self.head.parameters())

    def _save(self, folder: Path) -> None:
        from patentml.artifact import save_arrays

        assert self.head is not None
        save_arrays(folder / WEIGHTS_FILE, {k: v.detach().cpu().numpy() for k, v in self.head.state_dict().items()})
        self._save_encoder(folder)

    def _load(self, folder: Path) -> None:
        import torch

        from patentml.artifact import load_arrays
        from patentml.nn.head import Head

        if self.learned.get("encoder_tag"):
            self.encoder_dir = folder / ENCODER_DIR
        weights = load_arrays(folder / WEIGHTS_FILE)
        head = Head(weights["net.1.weight"].shape[1], len(self.labels), int(self.params["hidden"]),
                    float(self.params["dropout"]))
        head.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        if head.net[-1].out_features != len(self.labels):  # type: ignore[index]
            raise ConfigError(f"{folder}: head has {head.net[-1].out_features} outputs for {len(self.labels)} labels")  # type: ignore[index]
        self.head = head.eval()


class EmbedKNN(EmbeddingBackend):
    """Nearest training patents vote for their labels (:mod:`patentml.knn`).

    No training beyond encoding: the training vectors, TF-IDF rows and labels are the model, and
    ``k``, the similarity power and the TF-IDF share are chosen on validation. On the sample data
    stronger than a linear or MLP head and different enough from TF-IDF + SVM to lift a blend
    (docs/results.md).
    """

    name = "embed-knn"
    explains = True
    LEARNED = ("k", "power", "text_weight")
    DEFAULTS: dict[str, Any] = {
        **EmbeddingBackend.ENCODER_DEFAULTS,
        #: Neighbours, similarity power and TF-IDF share; "auto" picks from the grids on validation.
        "k": "auto",
        "power": "auto",
        "text_weight": "auto",
        "k_grid": [10, 20, 30, 50, 100],
        "power_grid": [1.0, 2.0, 3.0, 4.0, 6.0, 8.0],
        "text_weight_grid": [0.0, 0.3, 0.5, 0.7],
        #: The TF-IDF features (as tfidf-full's).
        "max_features": 200_000,
        "min_df": 2,
        "ngram_max": 2,
        "sublinear_tf": True,
        "max_tokens": MAX_TOKENS,
        #: Memories of more training patents than this are searched through an HNSW index; None:
        #: patentml.ann.EXACT_MAX (100k), where the index starts to pay.
        "ann_threshold": None,
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        from patentml.variants.linear import TfidfFeatures

        super().__init__(labels, params)
        self.memory: Any = None  # (n_train, dim) float32 unit vectors
        self.memory_labels: Any = None  # scipy CSR (n_train, labels)
        self.features = TfidfFeatures(self.params)
        self.text_memory: Any = None  # scipy CSR (n_train, features) when text_weight > 0
        self.memory_ids: list[str] | None = None  # training patent id of each memory row (None: an older artifact)
        self.index: Any = None  # patentml.ann.VectorIndex over the memory: exact, or HNSW above ann_threshold

    def _index(self) -> Any:
        from patentml.ann import VectorIndex

        if self.index is None:
            self.index = VectorIndex.build(self.memory, self.params["ann_threshold"])
        return self.index

    def _grid(self, name: str) -> list[float]:
        value = self.params[name]
        return [float(v) for v in self.params[f"{name}_grid"]] if value == "auto" else [float(value)]

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        import numpy as np
        import scipy.sparse as sp

        from patentml.ann import nearest_rows
        from patentml.knn import vote
        from patentml.metrics import at_k, choose_threshold
        from patentml.nn.loop import MIN_IMPROVEMENT

        started = time.perf_counter()
        data = self._embed_splits(train, valid, ctx)
        xt, yt, train_texts, self.memory_ids = data["train"]
        xv, yv, valid_texts, _ = data["valid"]
        # Stored as float16: round now, so the scores chosen on here are those the saved model gives.
        self.memory = xt.astype(np.float16).astype(np.float32)
        self.index = None
        self.memory_labels = sp.csr_matrix(yt)
        text_weights = self._grid("text_weight")
        text_x = None
        if any(w > 0 for w in text_weights):
            self.text_memory = self.features.fit_transform(train_texts)
            text_x = self.features.transform(valid_texts)
        truth = yv > 0
        ks = [int(k) for k in self._grid("k")]
        best: tuple[float, float, dict[str, float]] = (-1.0, 0.0, {})
        for tw in text_weights:
            neighbours = nearest_rows(xv, self._index(), max(ks), text_x, self.text_memory, tw)
            for k in ks:
                for power in self._grid("power"):
                    scores = vote(neighbours[0][:, :k], neighbours[1][:, :k], self.memory_labels, power)
                    f1 = choose_threshold(truth, scores, keep_top=True)[1] if len(truth) else 0.0
                    p1 = at_k(truth, scores, ks=(1,))["p@1"] if len(truth) else 0.0
                    log.debug("text_weight=%s k=%s power=%s: validation F1 %.4f P@1 %.4f", tw, k, power, f1, p1)
                    if f1 > best[0] + MIN_IMPROVEMENT:
                        best = (f1, p1, {"text_weight": tw, "k": k, "power": power})
        f1, p1, chosen = best
        self.learned.update(chosen)
        if chosen["text_weight"] == 0:
            self.text_memory = None
        log.info("chose %s (validation F1 %.4f, P@1 %.4f)", chosen, f1, p1)
        seconds = time.perf_counter() - started
        ctx.on_epoch(EpochLog(1, None, None, f1, p1, seconds, len(xt) / max(seconds, 1e-9)))

    def _similarities(self, texts: Sequence[str]) -> "np.ndarray":
        """(n, n_train) similarity of each text to every training patent, as the vote uses it."""
        from patentml.knn import similarities

        tw = float(self.setting("text_weight"))
        return similarities(self._vectors(texts), self.memory, self.features.transform(texts) if tw > 0 else None,
                            self.text_memory, tw)

    def predict_scores(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        from patentml.knn import knn_scores

        assert self.memory is not None, "fit or load the model first"
        tw = float(self.setting("text_weight"))
        return knn_scores(self._vectors(texts), self._index(), self.memory_labels, int(self.setting("k")),
                          float(self.setting("power")), self.features.transform(texts) if tw > 0 else None,
                          self.text_memory, tw)

    def explain(self, texts: Sequence[str], labels_per_text: Sequence[Sequence[str]],
                top_n: int = 5) -> list[dict[str, dict[str, Any]]]:
        """The nearest training patents that voted for each label: id, similarity, share of the vote, labels.

        A label's score is the sum of the ``weight`` of the neighbours that hold it.
        """
        import numpy as np

        from patentml.knn import nearest, vote_weights

        assert self.memory is not None, "fit or load the model first"
        index = {label: j for j, label in enumerate(self.labels)}
        out = []
        for start in range(0, len(texts), 256):  # (chunk, n_train) similarities at a time
            idx, sims = nearest(self._similarities(texts[start : start + 256]), int(self.setting("k")))
            weights = vote_weights(sims, float(self.setting("power")))
            for r, labels in enumerate(labels_per_text[start : start + 256]):
                rows = idx[r]
                held = self.memory_labels[rows].toarray() > 0  # (k, labels)
                explained = {}
                for label in labels:
                    voters = [n for n in np.flatnonzero(held[:, index[label]]) if weights[r, n] > 0][:top_n]
                    explained[label] = {"method": "neighbours", "neighbours": [
                        {"patent_id": None if self.memory_ids is None else self.memory_ids[rows[n]],
                         "similarity": round(float(sims[r, n]), 4), "weight": round(float(weights[r, n]), 4),
                         "labels": [self.labels[j] for j in np.flatnonzero(held[n])]} for n in voters]}
                    if self.memory_ids is None:
                        explained[label]["note"] = "this model was saved without its training patent ids"
                out.append(explained)
        return out

    def n_params(self) -> int:
        if self.memory is None:
            return 0
        return int(self.memory.size) + (0 if self.text_memory is None else int(self.text_memory.nnz))

    def _save(self, folder: Path) -> None:
        import numpy as np

        from patentml.artifact import save_arrays

        assert self.memory is not None
        y = self.memory_labels
        arrays = {"memory": self.memory.astype(np.float16), "indptr": y.indptr.astype(np.int64),
                  "indices": y.indices.astype(np.int32)}
        if self.text_memory is not None:
            t = self.text_memory
            arrays.update(self.features.save(folder))
            arrays.update({"text_data": t.data.astype(np.float32), "text_indices": t.indices.astype(np.int32),
                           "text_indptr": t.indptr.astype(np.int64)})
        save_arrays(folder / KNN_FILE, arrays)
        if self.memory_ids is not None:
            (folder / KNN_IDS_FILE).write_text(json.dumps(self.memory_ids))
        if self._index().kind == "hnsw":
            self._index().save(folder / ANN_FILE)
        self._save_encoder(folder)

    def _load(self, folder: Path) -> None:
        import numpy as np
        import scipy.sparse as sp

        from patentml.artifact import load_arrays

        arrays = load_arrays(folder / KNN_FILE)
        memory, indptr, indices = arrays["memory"], arrays["indptr"], arrays["indices"]
        if memory.ndim != 2 or len(indptr) != len(memory) + 1 or (len(indices) and indices.max() >= len(self.labels)):
            raise ConfigError(f"{folder / KNN_FILE}: inconsistent neighbour arrays for {len(self.labels)} labels")
        self.memory = memory.astype(np.float32)
        self.index = None
        if (folder / ANN_FILE).is_file():
            from patentml.ann import VectorIndex

            self.index = VectorIndex.load(folder / ANN_FILE)
        self.memory_labels = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                                           shape=(len(memory), len(self.labels)))
        ids_file = folder / KNN_IDS_FILE
        if ids_file.is_file():
            self.memory_ids = [str(i) for i in json.loads(ids_file.read_text())]
            if len(self.memory_ids) != len(memory):
                raise ConfigError(f"{ids_file}: {len(self.memory_ids)} ids for {len(memory)} neighbour rows")
        if float(self.setting("text_weight")) > 0:
            self.features.load(folder, arrays)
            self.text_memory = sp.csr_matrix((arrays["text_data"], arrays["text_indices"], arrays["text_indptr"]),
                                             shape=(len(memory), len(self.features.idf)))
