"""Prediction with a stored model: the champion, a model id from the store, or a local artifact folder.

In Python::

    from patentml.predict import Predictor

    with Predictor.open() as predictor:                  # the champion of PATENTML_STORE_URI
        for p in predictor.predict(["A wireless node retransmits packets ...", "A plough ..."], top_k=5):
            print(p["labels"], p["scores"])              # decided labels, best first; the top-5 scores
        why = predictor.explain("A wireless node retransmits packets ...")
        print(why["explanation"]["H04L"])                # the words, n-grams or neighbours behind H04L

Input to the CLI is text (arguments), a file or stdin: JSON Lines (``{"id", "abstract"}``) or plain
text, one patent per line (:mod:`patentml.predict_io`). Output is one object per input, in input
order: ``{"id", "labels", "scores"}`` (labels by the artifact's decision rule, ``scores`` the
top-k), ``"explanation"`` when asked, or ``{"id", "error"}`` for an input that cannot be used (the
rest goes on); over-long text is truncated and says so in a ``"warning"`` field.

Cold start matters (a user waits for the first answer), so this module imports only what the
model's backend needs: no database, no scikit-learn or transformers for GloVe+CNN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from patentml.exceptions import ArtifactError, ConfigError, DataError, StoreError
from patentml.predict_io import Record
from patentml.text import MAX_TOKENS
from patentml.textio import lone_surrogate

if TYPE_CHECKING:
    from patentml.settings import Settings
    from patentml.variants.base import Backend

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
#: Reasons (words, n-grams, neighbours) an explanation names per label.
EXPLAIN_TOP_N = 5
#: Patents read, scored and written per step (the backend batches within it by its own batch size).
DEFAULT_CHUNK = 1024
#: Characters kept of one text before tokenizing: far beyond MAX_TOKENS words, but bounds the work on junk.
MAX_CHARS = 50_000
SCORE_DIGITS = 4


@dataclass(frozen=True)
class Suggestion:
    """One ranked label of one patent: what ``patent_suggestions`` stores and CSV output writes."""

    rank: int  # 1 = the best label
    subclass: str
    score: float  # rounded to SCORE_DIGITS
    selected: bool  # the model's decision rule picks it

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "subclass": self.subclass, "score": self.score, "selected": self.selected}


class Predictor:
    """A loaded, checksum-verified model that turns abstracts into labels, top-k scores and explanations.

    Open one with :meth:`open` (the champion, a store model id or a local folder); use it as a
    context manager, or call :meth:`close`, to stop its scoring threads. Call it from one thread
    at a time (it runs its own threads for torch models; the prediction service takes turns).
    """

    def __init__(self, folder: Path | str, *, model_id: str | None = None, verify: bool = True,
                 source: str | None = None, workers: int | None = None) -> None:
        from patentml.artifact import MANIFEST, load_json, verify_artifact
        from patentml.variants.base import load_backend

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ArtifactError(f"model folder {self.folder} does not exist")
        self.manifest = verify_artifact(self.folder) if verify else load_json(self.folder / MANIFEST)
        self.backend: Backend = load_backend(self.folder)
        self.model_id = model_id or self.folder.name
        self.source = source or str(self.folder)
        self.labels = list(self.backend.labels)
        self.decision = self.backend.decision
        self.max_tokens = int(self.backend.params.get("max_tokens", MAX_TOKENS))
        self.workers = 1
        self._pool: Any = None
        if self.backend.uses_torch():  # torch releases the GIL: score in parallel workers
            self._set_workers(workers)

    def _set_workers(self, workers: int | None) -> None:
        """Score torch models in ``workers`` threads with one torch thread each (default: one per core).

        Measured on the 2-core machine: two single-threaded workers score ~2-5x more abstracts per
        second than one call with two OpenMP threads, whose lock-step barriers stall whenever
        another process takes a core. The caller's own torch thread setting is left as it was.
        """
        import os

        self.workers = workers if workers and workers > 0 else (os.cpu_count() or 1)

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: "Settings | None" = None, *, model_id: str | None = None,
             artifact: Path | str | None = None) -> "Predictor":
        """The model to predict with: a local ``artifact`` folder, else ``model_id`` from the model store,
        else the store's champion (what its ``champion`` pointer names now).

        ``settings`` default to the environment (``PATENTML_STORE_URI``, ``PATENTML_HOME``, ...). Store
        models are downloaded once into ``<home>/cache/models/<id>`` and verified (checksums) on every
        load. Raises :class:`StoreError` when the store has no champion or not that model, and
        :class:`ArtifactError` when a file is missing or changed.
        """
        from patentml.settings import get_settings

        settings = settings or get_settings()
        workers = settings.threads or None
        if artifact is not None:
            if model_id is not None:
                raise ConfigError("give either a model id or a local artifact folder, not both")
            return cls(artifact, source=f"artifact {artifact}", workers=workers)
        from patentml.artifact import cached_model_dir
        from patentml.store import open_store

        store = open_store(settings)
        what = f"model {model_id}"
        sha256 = None
        if model_id is None:
            pointer = store.pointer_info()
            if pointer is None:
                raise StoreError(
                    f"{store.uri} has no champion yet: run `patentml promote` first, or give --model ID "
                    "or --artifact DIR"
                )
            # The pointer names the manifest it was moved to: a model swapped under the same id is refused.
            model_id, sha256 = pointer["model_id"], pointer.get("sha256")
            what = f"champion {model_id}"
        cache = settings.model_cache_dir
        if not (cache / model_id / "manifest.json").is_file() and not store.exists(model_id):
            raise StoreError(f"model {model_id!r} is not in {store.uri}: see `patentml models list`")
        folder = cached_model_dir(store, model_id, cache, expected_sha256=sha256)
        try:
            return cls(folder, model_id=model_id, source=f"{what} from {store.uri}", workers=workers)
        except ArtifactError as exc:
            raise ArtifactError(
                f"{exc} (this is the local cache copy of {model_id}: delete {folder} to download it again)"
            ) from exc

    # -- predicting ------------------------------------------------------------------------------
    def check_text(self, text: str) -> tuple[str | None, str | None, str | None]:
        """``(text to score, warning, error)`` for one abstract."""
        from patentml.text import tokenize

        if not text or not text.strip():
            return None, None, "empty text"
        warning = None
        if len(text) > MAX_CHARS:
            text = text[:MAX_CHARS]
            warning = f"text longer than {MAX_CHARS:,} characters: truncated"
        problem = lone_surrogate(text)  # JSON "\ud800": explanations would echo it, and UTF-8 cannot carry it
        if problem is not None:
            return None, None, f"text is not valid Unicode: {problem}"
        words = tokenize(text)
        if not words:
            return None, None, "text has no words (only punctuation or symbols)"
        if len(words) > self.max_tokens:
            warning = (f"text has {len(words):,}{'+' if warning else ''} words; only the first "
                       f"{self.max_tokens} were used")
        return text, warning, None

    def scores(self, texts: Sequence[str], batch_size: int | None = None) -> Any:
        """Probabilities (n, labels) for already checked texts."""
        import numpy as np

        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        size = batch_size or self.backend.predict_batch

        def run(part: list[str]) -> Any:
            return self.backend.predict_scores(part, batch_size=size)

        n = self.workers
        if n <= 1 or len(texts) < 2 * size:
            return run(texts)
        import torch

        previous = torch.get_num_threads()
        try:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                # Each worker sets its own (thread-local) OpenMP thread count to 1 when it starts.
                self._pool = ThreadPoolExecutor(n, thread_name_prefix="patentml-predict",
                                                initializer=torch.set_num_threads, initargs=(1,))
            # Strided parts get the same mix of short and long abstracts, so the workers finish together.
            parts = [texts[i::n] for i in range(n)]
            out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
            for i, scores in enumerate(self._pool.map(run, parts)):
                out[i::n] = scores
        finally:
            torch.set_num_threads(previous)  # a worker's start-up call also changed the process default
        return out

    def close(self) -> None:
        """Stop the scoring threads (they also end with the process); the predictor stays usable."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def variant(self) -> str:
        """The variant the model was trained as (``tfidf-svm-full``), from its manifest."""
        return str(self.manifest.get("variant") or self.backend.name)

    def suggestions(self, scores: Any, top_k: int = DEFAULT_TOP_K) -> list[list[Suggestion]]:
        """Per row of a score matrix: the top-k labels, then any further label the decision rule selects.

        So the ``selected`` suggestions are the model's whole decision, also for a patent with more
        than ``top_k`` labels. Ranks are those of a stable sort by score (ties go to the label listed
        first), found without sorting whole rows: a full argsort was a third of a TF-IDF batch's time.
        """
        import numpy as np

        n, n_labels = scores.shape
        k = max(0, min(int(top_k), n_labels))
        decided = self.decision.apply(scores)
        kth = np.partition(scores, n_labels - k, axis=1)[:, n_labels - k] if k else None  # (n,) k-th best score
        labels, out = self.labels, []
        for i in range(n):
            row = scores[i]
            top = np.flatnonzero(row >= kth[i]) if k else np.zeros(0, dtype=np.int64)  # ties at the k-th included
            top = top[np.lexsort((top, -row[top]))][:k]  # by score, best first, then by label order
            ranked = [(r + 1, int(j)) for r, j in enumerate(top)]
            chosen = set(top.tolist())
            extra = [int(j) for j in np.flatnonzero(decided[i]) if j not in chosen]
            # The rank a full stable sort gives: labels scoring higher, and equal ones listed before.
            ranked += sorted((int((row > row[j]).sum() + (row[:j] == row[j]).sum()) + 1, j) for j in extra)
            out.append([Suggestion(r, labels[j], round(float(row[j]), SCORE_DIGITS), bool(decided[i, j]))
                        for r, j in ranked])
        return out

    def format(self, ids: Sequence[Any], scores: Any, top_k: int = DEFAULT_TOP_K,
               ranked: bool = False) -> list[dict[str, Any]]:
        """Output objects for a score matrix: decided labels (best first) and the top-k scores; with
        ``ranked`` also the :meth:`suggestions` as ``"suggestions"`` (what CSV output is made of)."""
        out = []
        for pid, found in zip(ids, self.suggestions(scores, top_k)):
            obj: dict[str, Any] = {"id": pid, "labels": [s.subclass for s in found if s.selected],
                                   "scores": {s.subclass: s.score for s in found if s.rank <= top_k}}
            if ranked:
                obj["suggestions"] = [s.as_dict() for s in found]
            out.append(obj)
        return out

    def predict(self, texts: Sequence[str], top_k: int = DEFAULT_TOP_K, ids: Sequence[Any] | None = None,
                batch_size: int | None = None, *, explain: bool = False,
                top_n: int = EXPLAIN_TOP_N) -> list[dict[str, Any]]:
        """Predict a list of abstracts: one ``{"id", "labels", "scores"}`` per text, in order.

        ``labels`` are the labels the model's decision rule picks, best first; ``scores`` the
        ``top_k`` highest label scores. ``ids`` default to 1, 2, ...; an unusable text (empty, no
        words) gives ``{"id", "error"}`` in its place. ``explain=True`` adds ``"explanation"``:
        for each label named, why (see :meth:`explain`), with up to ``top_n`` reasons.
        """
        ids = list(ids) if ids is not None else list(range(1, len(texts) + 1))
        return list(self.predict_records((Record(i, t) for i, t in zip(ids, texts)), top_k=top_k,
                                         batch_size=batch_size, explain=explain, top_n=top_n))

    def explain(self, text: str, top_k: int = DEFAULT_TOP_K, top_n: int = EXPLAIN_TOP_N) -> dict[str, Any]:
        """One abstract's prediction with, for every label it names, the reasons the model has:

        - TF-IDF models: the words and bigrams that added most to the label's score (``terms``);
        - the kNN model: the nearest training patents that voted for it, with their labels (``neighbours``);
        - the paper's CNNs: the n-grams that won the max-pooling, weighted by their effect (``ngrams``);
        - a blend: each member's score, weight and reasons (``members``);
        - a head on one sentence vector (embed-linear): no per-word reason, and it says so (``none``).

        Raises :class:`DataError` when the text cannot be used (empty, no words).
        """
        (result,) = self.predict([text], top_k=top_k, explain=True, top_n=top_n)
        if "error" in result:
            raise DataError(result["error"])
        return result

    def predict_records(self, records: Iterable[Record], top_k: int = DEFAULT_TOP_K, batch_size: int | None = None,
                        chunk: int | None = None, progress: Any = None, *, explain: bool = False,
                        top_n: int = EXPLAIN_TOP_N, ranked: bool = False) -> Iterator[dict[str, Any]]:
        """Output objects for records, in order; unusable records become ``{"id", "error"}``."""
        chunk = chunk or DEFAULT_CHUNK
        options = {"top_k": top_k, "batch_size": batch_size, "explain": explain, "top_n": top_n, "ranked": ranked}
        buffer: list[Record] = []
        for record in records:
            buffer.append(record)
            if len(buffer) >= chunk:
                yield from self._predict_chunk(buffer, **options)
                if progress is not None:
                    progress.update(len(buffer))
                buffer = []
        if buffer:
            yield from self._predict_chunk(buffer, **options)
            if progress is not None:
                progress.update(len(buffer))

    def _predict_chunk(self, records: list[Record], top_k: int, batch_size: int | None, explain: bool,
                       top_n: int, ranked: bool) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(records)
        warnings: dict[int, str] = {}
        good: list[int] = []
        texts: list[str] = []
        for i, rec in enumerate(records):
            if rec.error is not None:
                results[i] = {"id": rec.id, "error": rec.error}
                continue
            if not isinstance(rec.text, str):
                results[i] = {"id": rec.id, "error": "the abstract must be a string"}
                continue
            text, warning, error = self.check_text(rec.text)
            if error is not None:
                results[i] = {"id": rec.id, "error": error}
                continue
            assert text is not None
            if warning:
                warnings[i] = warning
            good.append(i)
            texts.append(text)
        if good:
            try:
                scores = self.scores(texts, batch_size)
            except Exception as exc:  # one bad batch must not end the stream: say so per line
                log.exception("Prediction failed for a batch of %d texts", len(texts))
                for i in good:
                    results[i] = {"id": records[i].id, "error": f"prediction failed: {exc.__class__.__name__}: {exc}"}
            else:
                objs = self.format([records[i].id for i in good], scores, top_k, ranked=ranked)
                if explain:
                    self._attach_explanations(texts, objs, top_n)
                for i, obj in zip(good, objs):
                    if i in warnings:
                        obj["warning"] = warnings[i]
                    results[i] = obj
        return [r for r in results if r is not None]

    def _attach_explanations(self, texts: list[str], objs: list[dict[str, Any]], top_n: int) -> None:
        """``explanation`` for every label an object names (its top-k and its decided labels)."""
        named = [list(dict.fromkeys([*obj["scores"], *obj["labels"]])) for obj in objs]
        try:
            explanations = self.backend.explain(texts, named, top_n)
        except Exception as exc:  # the labels stand without their reasons
            log.exception("Explaining a batch of %d texts failed", len(texts))
            for obj in objs:
                obj["explanation_error"] = f"{exc.__class__.__name__}: {exc}"
            return
        for obj, explanation in zip(objs, explanations):
            obj["explanation"] = explanation


# Input and output live in patentml.predict_io; kept importable from here for existing callers.
from patentml.predict_io import count_lines, predict_stream, read_records, write_lines  # noqa: E402

__all__ = ["DEFAULT_TOP_K", "EXPLAIN_TOP_N", "Predictor", "Record", "Suggestion", "count_lines", "predict_stream",
           "read_records", "write_lines"]
