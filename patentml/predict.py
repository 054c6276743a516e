"""Prediction with a stored model: the champion, a model id from the store, or a local artifact folder.

Input is text (arguments), a file or stdin: JSON Lines (``{"id", "abstract"}``) or plain text, one
patent per line. Output is one JSON line per input line, in input order:
``{"id", "labels", "scores"}`` (labels by the artifact's decision rule, ``scores`` the top-k), or
``{"id", "error"}`` for a line that cannot be used (the rest goes on); over-long text is truncated
and says so in a ``"warning"`` field.

Cold start matters (a user waits for the first answer), so this module imports only what the
model's backend needs: no database, no scikit-learn or transformers for GloVe+CNN.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, TextIO

from patentml.exceptions import ArtifactError, ConfigError, StoreError
from patentml.text import MAX_TOKENS

if TYPE_CHECKING:
    from patentml.settings import Settings
    from patentml.variants.base import Backend

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
#: Patents read, scored and written per step (the backend batches within it by its own batch size).
DEFAULT_CHUNK = 1024
#: Characters kept of one text before tokenizing: far beyond MAX_TOKENS words, but bounds the work on junk.
MAX_CHARS = 50_000
SCORE_DIGITS = 4


@dataclass
class Record:
    """One input line: an id and a text, or the error that makes it unusable."""

    id: Any
    text: str | None = None
    error: str | None = None


class Predictor:
    """A loaded, checksum-verified model that turns abstracts into labels and top-k scores."""

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
        """A local ``artifact`` folder, else ``model_id`` from the store, else the store's champion.

        Store models are downloaded once into ``<home>/cache/models/<id>`` and verified (checksums)
        on every load.
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
        """Stop the scoring threads (they also end with the process)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def format(self, ids: Sequence[Any], scores: Any, top_k: int = DEFAULT_TOP_K) -> list[dict[str, Any]]:
        """Output objects for a score matrix: decided labels (best first) and the top-k scores."""
        import numpy as np

        if scores.shape[0] == 0:
            return []
        decided = self.decision.apply(scores)
        k = max(0, min(int(top_k), scores.shape[1]))
        order = np.argsort(-scores, axis=1, kind="stable")
        labels = self.labels
        out = []
        for i, pid in enumerate(ids):
            row = scores[i]
            picked = np.flatnonzero(decided[i])
            picked = picked[np.argsort(-row[picked], kind="stable")]  # best first, as in the ranking
            top = {labels[j]: round(float(row[j]), SCORE_DIGITS) for j in order[i, :k].tolist()}
            out.append({"id": pid, "labels": [labels[j] for j in picked.tolist()], "scores": top})
        return out

    def predict(self, texts: Sequence[str], top_k: int = DEFAULT_TOP_K, ids: Sequence[Any] | None = None,
                batch_size: int | None = None) -> list[dict[str, Any]]:
        """Predict a list of abstracts; a bad one gives an ``error`` object in its place."""
        ids = list(ids) if ids is not None else list(range(1, len(texts) + 1))
        return list(self.predict_records((Record(i, t) for i, t in zip(ids, texts)), top_k=top_k,
                                         batch_size=batch_size))

    def predict_records(self, records: Iterable[Record], top_k: int = DEFAULT_TOP_K, batch_size: int | None = None,
                        chunk: int = DEFAULT_CHUNK, progress: Any = None) -> Iterator[dict[str, Any]]:
        """Output objects for records, in order; unusable records become ``{"id", "error"}``."""
        buffer: list[Record] = []
        for record in records:
            buffer.append(record)
            if len(buffer) >= chunk:
                yield from self._predict_chunk(buffer, top_k, batch_size)
                if progress is not None:
                    progress.update(len(buffer))
                buffer = []
        if buffer:
            yield from self._predict_chunk(buffer, top_k, batch_size)
            if progress is not None:
                progress.update(len(buffer))

    def _predict_chunk(self, records: list[Record], top_k: int, batch_size: int | None) -> list[dict[str, Any]]:
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
                for i, obj in zip(good, self.format([records[i].id for i in good], scores, top_k)):
                    if i in warnings:
                        obj["warning"] = warnings[i]
                    results[i] = obj
        return [r for r in results if r is not None]


# --- input -------------------------------------------------------------------------------------


def _json_record(line: str, lineno: int) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return Record(lineno, error=f"line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        return Record(lineno, error=f"line {lineno}: expected a JSON object with \"id\" and \"abstract\"")
    pid = obj.get("id", lineno)
    if pid is None:
        pid = lineno
    text = obj.get("abstract", obj.get("text"))
    if text is None:
        return Record(pid, error=f"line {lineno}: no \"abstract\" field")
    if not isinstance(text, str):
        return Record(pid, error=f"line {lineno}: \"abstract\" must be a string, got {type(text).__name__}")
    return Record(pid, text)


def read_records(stream: TextIO, fmt: str = "auto") -> Iterator[Record]:
    """Records from a text stream: ``jsonl``, ``text`` (one abstract per line), or ``auto``.

    ``auto`` looks at the first non-blank line: ``{`` means JSON Lines. Every line gives one
    record (a blank line is an "empty text" error), so output line N answers input line N. Ids
    default to the line number.
    """
    if fmt not in ("auto", "jsonl", "text"):
        raise ConfigError(f"input format {fmt!r} must be auto, jsonl or text")
    pending: list[str] = []
    if fmt == "auto":
        for line in stream:
            pending.append(line)
            if line.strip():
                fmt = "jsonl" if line.lstrip().startswith("{") else "text"
                break
        else:
            fmt = "text"

    def lines() -> Iterator[str]:
        yield from pending
        yield from stream

    for lineno, raw in enumerate(lines(), 1):
        line = raw.rstrip("\r\n")
        if fmt == "jsonl":
            if not line.strip():
                yield Record(lineno, error=f"line {lineno}: empty line")
            else:
                yield _json_record(line, lineno)
        else:
            yield Record(lineno, line)


def count_lines(path: Path) -> int:
    """Lines of a file (for the progress bar total), counted in binary chunks."""
    n, last = 0, b"\n"
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (0 if last == b"\n" else 1)


def write_lines(results: Iterable[dict[str, Any]], out: TextIO) -> int:
    """Write JSON lines; returns how many were errors."""
    errors = 0
    for obj in results:
        if "error" in obj:
            errors += 1
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    out.flush()
    return errors


def predict_stream(predictor: Predictor, stream: TextIO, out: TextIO, *, fmt: str = "auto",
                   top_k: int = DEFAULT_TOP_K, batch_size: int | None = None, chunk: int = DEFAULT_CHUNK,
                   total: int | None = None, progress: bool = False) -> dict[str, int]:
    """Read records from ``stream``, write JSON lines to ``out``; a progress bar on stderr if asked."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit=" patents", desc="predict", file=sys.stderr, mininterval=0.5, leave=True)
    n = errors = 0
    try:
        for obj in predictor.predict_records(read_records(stream, fmt), top_k=top_k, batch_size=batch_size,
                                             chunk=chunk, progress=bar):
            n += 1
            if "error" in obj:
                errors += 1
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        out.flush()
    finally:
        if bar is not None:
            bar.close()
    return {"lines": n, "errors": errors}


__all__ = ["DEFAULT_TOP_K", "Predictor", "Record", "count_lines", "predict_stream",
           "read_records", "write_lines"]
