"""What every variant backend is: fit on streamed training data, score texts, save to and load from a folder."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Protocol, Sequence

import numpy as np

from patentml.exceptions import ArtifactError, ConfigError

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
DECISION_FILE = "decision.json"
FORMAT_VERSION = 1

Doc = tuple[str, str, list[str]]  # (patent_id, abstract, labels)


class Corpus(Protocol):
    """A re-iterable stream of documents (Postgres-backed in production, a list in tests)."""

    def __iter__(self) -> Iterator[Doc]: ...

    def __len__(self) -> int: ...


class ListCorpus:
    """An in-memory corpus for tests and small tools."""

    def __init__(self, docs: Iterable[Doc]) -> None:
        self.docs = list(docs)

    def __iter__(self) -> Iterator[Doc]:
        return iter(self.docs)

    def __len__(self) -> int:
        return len(self.docs)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    valid_loss: float | None
    valid_f1: float | None
    valid_p_at_1: float | None
    seconds: float
    patents_per_second: float | None


@dataclass
class FitContext:
    """What a training run offers a backend: where to checkpoint, how to report, which device."""

    work_dir: Path
    device: str = "cpu"
    seed: int = 0
    progress: bool = False
    cache_dir: Path | None = None
    cache_key: str | None = None
    on_epoch: Callable[[EpochLog], None] = field(default=lambda e: None)
    #: Resume from the checkpoint in ``work_dir`` when there is one.
    resume: bool = True
    #: Sentence-embedding cache (Postgres-backed in runs); None computes every vector.
    embedding_cache: Any = None
    #: The database and snapshot, for backends built from other runs (the ensemble).
    engine: Any = None
    snapshot_id: int | None = None


@dataclass
class DecisionRule:
    """How scores become labels: a global threshold, keep-the-top-label, and optionally per-label thresholds.

    ``per_label`` holds thresholds chosen on validation; they are applied only when ``use_per_label``
    (they are kept otherwise so the evaluation can report them beside the global rule).
    """

    threshold: float = 0.5
    keep_top: bool = False
    per_label: list[float] | None = None
    use_per_label: bool = False
    name: str = "t0.5"

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "keep_top": self.keep_top, "per_label": self.per_label,
                "use_per_label": self.use_per_label, "name": self.name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecisionRule":
        return cls(
            threshold=float(data.get("threshold", 0.5)),
            keep_top=bool(data.get("keep_top", False)),
            per_label=data.get("per_label"),
            use_per_label=bool(data.get("use_per_label", False)),
            name=str(data.get("name", "custom")),
        )

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Boolean (n, labels) decisions for probability scores (n, labels)."""
        use = self.use_per_label and self.per_label is not None
        thresholds = np.asarray(self.per_label, dtype=np.float32) if use else self.threshold
        pred = scores >= thresholds
        if self.keep_top and scores.shape[1]:
            top = scores.argmax(axis=1)
            pred[np.arange(scores.shape[0]), top] = True
        return pred


class Backend:
    """A variant's model. Public ``fit`` merges defaults with params and calls the protected ``_fit``."""

    name: ClassVar[str] = "base"
    #: Defaults of this backend's settings; the paper's values where the paper has one.
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: Where backends on sentence embeddings may find vectors at prediction time (set by evaluation
    #: and the ensemble to the Postgres cache); None encodes every text.
    embedding_cache: Any = None

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        unknown = sorted(set(params or {}) - set(self.DEFAULTS))
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)} for the {self.name} backend; "
                f"known: {', '.join(sorted(self.DEFAULTS))}"
            )
        self.labels = list(labels)
        self.params: dict[str, Any] = {**self.DEFAULTS, **(params or {})}
        self.decision = DecisionRule()

    # -- training ----------------------------------------------------------------------------
    def fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        if len(train) == 0:
            raise ConfigError("the training split is empty: ingest more data or check the label scheme")
        self._fit(train, valid, ctx)

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        raise NotImplementedError

    # -- inference ---------------------------------------------------------------------------
    def predict_scores(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Probabilities (n, len(labels)) for raw abstracts."""
        raise NotImplementedError

    def n_params(self) -> int:
        return 0

    # -- persistence -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write weights and config into ``folder`` (which exists and is empty)."""
        folder.mkdir(parents=True, exist_ok=True)
        self._save(folder)
        meta = {"format_version": FORMAT_VERSION, "backend": self.name, "params": self.params, "labels": self.labels}
        (folder / MODEL_FILE).write_text(json.dumps(meta, indent=1))
        (folder / DECISION_FILE).write_text(json.dumps(self.decision.to_dict(), indent=1))

    def _save(self, folder: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path) -> "Backend":
        meta = read_model_meta(folder)
        backend = cls(meta["labels"], meta["params"])
        backend._load(folder)
        decision = folder / DECISION_FILE
        if decision.exists():
            backend.decision = DecisionRule.from_dict(json.loads(decision.read_text()))
        return backend

    def _load(self, folder: Path) -> None:
        raise NotImplementedError


def read_model_meta(folder: Path) -> dict[str, Any]:
    path = folder / MODEL_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is missing: {folder} is not a PatentML model folder") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {meta.get('format_version')}, this PatentML reads {FORMAT_VERSION}"
        )
    return meta


def backend_by_name(name: str) -> type[Backend]:
    from patentml.variants import ENCODERS

    if name not in ENCODERS:
        raise ArtifactError(f"model folder names an unknown backend {name!r}")
    return ENCODERS[name][0]()


def load_backend(folder: Path) -> Backend:
    """Load whatever backend a model folder holds."""
    meta = read_model_meta(folder)
    return backend_by_name(meta["backend"]).load(folder)


def collect(corpus: "Corpus | Iterable[Doc]") -> tuple[list[str], list[str], list[list[str]]]:
    """A corpus read once into (ids, texts, labels) lists."""
    ids: list[str] = []
    texts: list[str] = []
    labels: list[list[str]] = []
    for pid, text, ls in corpus:
        ids.append(pid)
        texts.append(text)
        labels.append(ls)
    return ids, texts, labels


def label_matrix(doc_labels: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """Multi-hot (n, len(labels)) float32; labels outside the label space are ignored (and counted elsewhere)."""
    index = {l: i for i, l in enumerate(labels)}
    y = np.zeros((len(doc_labels), len(labels)), dtype=np.float32)
    for row, ls in enumerate(doc_labels):
        for l in ls:
            j = index.get(l)
            if j is not None:
                y[row, j] = 1.0
    return y
