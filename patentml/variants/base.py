"""What every variant backend is: fit on the inputs the caller hands it, score texts, save to and load from a folder.

Capabilities are class attributes, so the registry, training, prediction, the CLI and the DAGs read
them without instantiating anything. Backend modules keep heavy imports (numpy, torch, scikit-learn)
inside methods: importing a backend module must stay cheap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Protocol, Sequence

from patentml.decision import DecisionRule
from patentml.exceptions import ArtifactError, ConfigError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
DECISION_FILE = "decision.json"
FORMAT_VERSION = 1

Doc = tuple[str, str, list[str]]  # (patent_id, abstract, labels)

#: Values of :attr:`Backend.caches`: sentence vectors by text hash (Postgres), token vectors per snapshot (files).
SENTENCE_VECTORS = "sentence_vectors"
TOKEN_VECTORS = "token_vectors"


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
    train_loss: float | None
    valid_loss: float | None
    valid_f1: float | None
    valid_p_at_1: float | None
    seconds: float
    patents_per_second: float | None


@dataclass
class FitContext:
    """What a training run hands a backend besides the splits: where to work, how to report, and its inputs."""

    work_dir: Path
    device: str = "cpu"
    seed: int = 0
    progress: bool = False
    #: Folder and key of per-snapshot caches (frozen token vectors), for backends that cache them.
    cache_dir: Path | None = None
    cache_key: str | None = None
    on_epoch: Callable[[EpochLog], None] = field(default=lambda e: None)
    #: Called with the checkpoint files of each finished epoch (the run uploads them to the store).
    on_checkpoint: Callable[[list[Path]], None] = field(default=lambda files: None)
    #: Resume from the checkpoint in ``work_dir`` when there is one.
    resume: bool = True
    #: Sentence-vector cache (Postgres-backed in runs); None computes every vector.
    embedding_cache: Any = None
    #: For backends built from other runs (``built_from_runs``): (run id, loaded backend) of each candidate.
    members: list[tuple[int, "Backend"]] = field(default_factory=list)


class Backend:
    """A variant's model. Public ``fit`` merges defaults with params and calls the protected ``_fit``."""

    name: ClassVar[str] = "base"
    #: The variant name carries a loss (``glove-wbce-full``) and training uses it.
    has_loss: ClassVar[bool] = False
    #: Training and prediction run in torch (threads and device are configured for it).
    needs_torch: ClassVar[bool] = False
    #: Patents per forward pass at prediction when the caller does not say.
    predict_batch: ClassVar[int] = 256
    #: The ``fine_tune`` setting trains the BERT-family encoder too.
    can_fine_tune: ClassVar[bool] = False
    #: Inputs this backend caches across runs (:data:`SENTENCE_VECTORS`, :data:`TOKEN_VECTORS`).
    caches: ClassVar[tuple[str, ...]] = ()
    #: Built from other finished runs (handed in as ``FitContext.members``), not trained on text.
    built_from_runs: ClassVar[bool] = False
    #: For ``built_from_runs``: the settings naming the candidate runs (the caller resolves them).
    CANDIDATE_SETTINGS: ClassVar[tuple[str, ...]] = ()
    #: Defaults of this backend's settings; the paper's values where the paper has one.
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: Settings that ``"auto"`` lets fit choose; the chosen values are artifact state (``learned``).
    LEARNED: ClassVar[tuple[str, ...]] = ()
    #: :meth:`explain` names reasons for a label (words, n-grams, neighbours); False: it says why it cannot.
    explains: ClassVar[bool] = False
    #: What :meth:`explain` says of each label when the backend has no reasons to give.
    NO_REASONS: ClassVar[str] = "this model gives no per-label reasons"

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        unknown = sorted(set(params or {}) - set(self.DEFAULTS))
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)} for the {self.name} backend; "
                f"known: {', '.join(sorted(self.DEFAULTS))}"
            )
        self.labels = list(labels)
        self.params: dict[str, Any] = {**self.DEFAULTS, **(params or {})}
        #: What fit learned beyond weights (chosen k, encoder tag, ...): saved with the artifact.
        self.learned: dict[str, Any] = {}
        self.decision = DecisionRule()
        #: Where backends on sentence embeddings find vectors at prediction time; None encodes every text.
        self.embedding_cache: Any = None

    def uses_torch(self) -> bool:
        """Whether this model runs in torch (a blend: whether any member does)."""
        return self.needs_torch

    def setting(self, key: str) -> Any:
        """A setting as the model uses it: the value fit chose when it chose one, else the configured one."""
        return self.learned.get(key, self.params[key])

    def resolved_params(self) -> dict[str, Any]:
        """The settings with every value fit chose filled in (what ``runs.settings`` records after fit)."""
        return {**self.params, **{k: v for k, v in self.learned.items() if k in self.params}}

    # -- training ----------------------------------------------------------------------------
    def fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        if len(train) == 0 and not self.built_from_runs:
            raise ConfigError("the training split is empty: ingest more data or check the label scheme")
        self._fit(train, valid, ctx)

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        raise NotImplementedError

    # -- inference ---------------------------------------------------------------------------
    def predict_scores(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        """Probabilities (n, len(labels)) for raw abstracts."""
        raise NotImplementedError

    def rule_scores(self, texts: Sequence[str]) -> "np.ndarray":
        """The validation scores the decision rule is chosen on: :meth:`predict_scores`, unless fit learned
        from these very texts (a re-ranking blend), which then returns its out-of-fold scores for them."""
        return self.predict_scores(texts)

    def explain(self, texts: Sequence[str], labels_per_text: Sequence[Sequence[str]],
                top_n: int = 5) -> list[dict[str, dict[str, Any]]]:
        """Why each text got each of its labels: one ``{label: explanation}`` per text.

        An explanation is a JSON-safe dict with a ``method`` naming its kind (``terms``,
        ``neighbours``, ``ngrams``, ``blend``, or ``none`` with a ``reason``) and at most ``top_n``
        reasons, strongest first. Backends that can give reasons set :attr:`explains`.
        """
        return [{label: {"method": "none", "reason": self.NO_REASONS} for label in labels}
                for labels in labels_per_text]

    def n_params(self) -> int:
        return 0

    # -- persistence -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write weights and config into ``folder`` (which exists and is empty)."""
        folder.mkdir(parents=True, exist_ok=True)
        self._save(folder)
        meta = {"format_version": FORMAT_VERSION, "backend": self.name, "params": self.params,
                "learned": self.learned, "labels": self.labels}
        (folder / MODEL_FILE).write_text(json.dumps(meta, indent=1))
        (folder / DECISION_FILE).write_text(json.dumps(self.decision.to_dict(), indent=1))

    def _save(self, folder: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path) -> "Backend":
        meta = read_model_meta(folder)
        params = meta["params"]
        # Artifacts written before ``learned`` existed kept the chosen values in ``params``.
        learned = meta.get("learned")
        if learned is None:
            learned = {k: v for k, v in params.items() if k in cls.LEARNED and v != "auto"}
            params = {k: v for k, v in params.items() if k in cls.DEFAULTS or k not in cls.LEARNED}
        backend = cls(meta["labels"], params)
        backend.learned = dict(learned)
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


def load_backend(folder: Path) -> Backend:
    """Load whatever backend a model folder holds."""
    from patentml.variants import BACKENDS, backend_class

    name = read_model_meta(folder)["backend"]
    if name not in BACKENDS:
        raise ArtifactError(f"model folder {folder} names an unknown backend {name!r}")
    return backend_class(name).load(folder)


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
