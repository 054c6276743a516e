"""``patentml score``: the champion's suggestions for every patent that has none from it, into ``patent_suggestions``.

Patents stream out of Postgres through a server-side cursor, are scored a batch at a time and each
batch is committed in its own transaction, so memory stays flat, a crash leaves only whole batches
(whole patents) behind, and running again scores just what is still missing. The scores are those
of ``patentml predict`` on the same abstracts (the same :class:`~patentml.predict.Predictor`).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from patentml.exceptions import DataError
from patentml.predict import DEFAULT_CHUNK, DEFAULT_TOP_K

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from patentml.predict import Predictor
    from patentml.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ScoreSummary:
    """What one ``patentml score`` run did."""

    model_id: str
    scored: int = 0  # patents that got suggestions now
    unusable: int = 0  # patents whose abstract has no words: nothing to suggest (tried again next time)
    rows: int = 0  # suggestion rows written
    selected: int = 0  # of which the decision rule picks
    already: int = 0  # patents that held suggestions from this model before (left as they were)
    replaced: bool = False
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.scored / self.seconds if self.seconds else 0.0
        verb = "rescored" if self.replaced else "scored"
        text = (f"{self.model_id}: {verb} {self.scored:,} patents ({self.rows:,} suggestions, "
                f"{self.selected / max(self.scored, 1):.2f} selected per patent) in {self.seconds:.1f} s "
                f"({rate:,.0f} patents/s)")
        if not self.replaced:
            text += f"; {self.already:,} already had suggestions from it"
        if self.unusable:
            text += f"; {self.unusable:,} without words to score"
        return text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_patents(predictor: "Predictor", engine: "Engine", *, rescore: bool = False, since: dt.date | None = None,
                  top_k: int = DEFAULT_TOP_K, commit_every: int = DEFAULT_CHUNK, reuse_vectors: bool = False,
                  progress: bool = False) -> ScoreSummary:
    """Write ``predictor``'s suggestions for the patents that have none from its model (``rescore``: for every
    patent, replacing what the model said before), first stored on or after ``since`` when given.

    ``reuse_vectors`` takes sentence vectors from the Postgres cache that training and evaluation filled
    (float16: much faster for MiniLM models, scores may differ from ``predict``'s in the 4th decimal).
    """
    from patentml.db import suggestions

    if top_k < 1:
        raise DataError("top-k must be at least 1: a suggestion row needs a label")
    if commit_every < 1:
        raise DataError("commit-every must be at least 1")
    if reuse_vectors:
        from patentml.embedcache import PgEmbeddingCache

        predictor.backend.embedding_cache = PgEmbeddingCache(engine)
    model_id = predictor.model_id
    summary = ScoreSummary(model_id, replaced=rescore)
    started = time.perf_counter()
    with engine.connect() as reader:  # one transaction: the lock and the server-side cursor live as long as it
        if not suggestions.try_lock(reader, model_id):
            raise DataError(f"another `patentml score` is writing suggestions of {model_id}: wait for it to finish")
        total = suggestions.count_pending(reader, model_id, since=since, rescore=rescore)
        if not rescore:
            summary.already = suggestions.count_scored(reader, model_id)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit=" patents", desc="score", file=sys.stderr, mininterval=0.5)
        try:
            for part in suggestions.stream_pending(reader, model_id, commit_every, since=since, rescore=rescore):
                ids, texts = [], []
                for pid, abstract in part:  # checked and truncated exactly as `predict` does
                    text, _, error = predictor.check_text(abstract or "")
                    if error is None:
                        ids.append(pid)
                        texts.append(text)
                summary.unusable += len(part) - len(ids)
                summary.scored += len(ids)
                # A failing model raises here, before the batch's transaction: nothing of it is written.
                found = predictor.suggestions(predictor.scores(texts), top_k) if texts else []
                rows = [{"patent_id": pid, **s.as_dict()} for pid, ranked in zip(ids, found) for s in ranked]
                with engine.begin() as writer:
                    summary.rows += suggestions.write(writer, model_id, rows, [r[0] for r in part], rescore)
                summary.selected += sum(r["selected"] for r in rows)
                if bar is not None:
                    bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()
            reader.rollback()  # read-only; ends the transaction and releases the lock
    summary.seconds = time.perf_counter() - started
    log.info("%s", summary.line())
    return summary


def score_champion(settings: "Settings", engine: "Engine", *, model_id: str | None = None,
                   **options: Any) -> ScoreSummary:
    """:func:`score_patents` with the store's champion (or ``model_id``), opened as ``patentml predict`` does."""
    from patentml.db.migrate import ensure_schema
    from patentml.predict import Predictor

    ensure_schema(engine)
    with Predictor.open(settings, model_id=model_id) as predictor:
        log.info("Scoring with %s", predictor.source)
        return score_patents(predictor, engine, **options)
