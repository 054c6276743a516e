"""SQLAlchemy 2 models: the tables analysts query (names are a public interface, see docs/sql.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so Alembic migrations and the models agree.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB}


def _now() -> Any:
    return func.now()


# --- corpus -------------------------------------------------------------------------------------

#: What an ingest batch can end as: ``partial`` when its file broke off (the records before the
#: break are stored), ``failed`` when nothing of it was stored (the row says why in ``message``).
BATCH_STATUSES = ("running", "succeeded", "partial", "failed")


class IngestBatch(Base):
    """One source file ingested: what was read and what happened to it."""

    __tablename__ = "ingest_batches"

    batch_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    n_read: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_stored: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_updated: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_unchanged: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_rejected: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_skipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_labels_dropped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Records without labels (new filings), whether stored now or already there.
    n_unlabelled: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    seconds: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in BATCH_STATUSES)})", name="status"),
    )


class Patent(Base):
    """One patent, whatever source(s) it came from; ``patent_id`` is canonical (``US8926509``)."""

    __tablename__ = "patents"

    patent_id: Mapped[str] = mapped_column(Text, primary_key=True)
    title: Mapped[str | None] = mapped_column(Text)
    abstract: Mapped[str] = mapped_column(Text)
    date: Mapped[dt.date | None] = mapped_column(Date)
    source: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    first_seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    # Batch ids are bookkeeping, not constraints: a foreign key here was measured to cost about 40 %
    # of the server's time in a bulk upsert (checked row by row), and a batch is never deleted.
    first_batch_id: Mapped[int | None] = mapped_column(Integer)
    last_batch_id: Mapped[int | None] = mapped_column(Integer)


# Labels and sources carry no foreign key to patents: the loader writes them in the transaction that
# writes the patent and PatentML never deletes a patent, while a per-row check cost about a third of
# a bulk load (measured, benchmarks/ingest.py). Deleting a patent by hand means deleting its rows here.
# For the same reason patent_labels has no index by subclass: nothing looks labels up that way.


class PatentSource(Base):
    """What each source last said about a patent: re-reading the same content is a no-op."""

    __tablename__ = "patent_sources"

    patent_id: Mapped[str] = mapped_column(Text, primary_key=True)
    source: Mapped[str] = mapped_column(Text, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[int] = mapped_column(Integer)  # bookkeeping (see Patent.first_batch_id)
    #: Where in that source the record was (``line 12``) when its content was last stored.
    position: Mapped[str | None] = mapped_column(Text)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class PatentLabel(Base):
    """A subclass label of a patent under one scheme; ``position`` 0 is the main (first) label."""

    __tablename__ = "patent_labels"

    patent_id: Mapped[str] = mapped_column(Text, primary_key=True)
    scheme: Mapped[str] = mapped_column(String(3), primary_key=True)
    subclass: Mapped[str] = mapped_column(String(4), primary_key=True)
    section: Mapped[str] = mapped_column(String(1))
    position: Mapped[int] = mapped_column(Integer)
    is_main: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (
        CheckConstraint("scheme IN ('CPC', 'IPC')", name="scheme"),
        CheckConstraint("subclass ~ '^[A-HY][0-9]{2}[A-Z]$'", name="subclass"),
    )


class RejectedRecordRow(Base):
    """Input that was not (wholly) used, with where it was and why.

    ``whole`` is false when the record was stored but some of its labels were dropped.
    """

    __tablename__ = "rejected_records"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    batch_id: Mapped[int] = mapped_column(
        ForeignKey("ingest_batches.batch_id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(Text)
    position: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    snippet: Mapped[str | None] = mapped_column(Text)
    patent_id: Mapped[str | None] = mapped_column(Text)
    whole: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


# --- splits -------------------------------------------------------------------------------------


class DatasetSnapshot(Base):
    """A frozen view of the corpus for training: which patents, which side, which label scheme."""

    __tablename__ = "dataset_snapshots"

    snapshot_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    label_scheme: Mapped[str] = mapped_column(String(8))
    fingerprint: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class SnapshotMember(Base):
    """A patent of a snapshot: its split (train/valid/test; valid is carved out of train) and subset flag."""

    __tablename__ = "snapshot_members"

    snapshot_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_snapshots.snapshot_id", ondelete="CASCADE"), primary_key=True
    )
    patent_id: Mapped[str] = mapped_column(Text, primary_key=True)
    split: Mapped[str] = mapped_column(String(5))
    in_subset: Mapped[bool] = mapped_column(Boolean)
    #: The scheme the patent's labels come from (CPC, or IPC where CPC+IPC falls back to it).
    label_scheme: Mapped[str] = mapped_column(String(3))
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text))

    __table_args__ = (
        CheckConstraint("split IN ('train', 'valid', 'test')", name="split"),
        Index("ix_snapshot_members_split", "snapshot_id", "split", "in_subset"),
    )


class SnapshotStat(Base):
    """Counts per dataset and split, as the paper reports them."""

    __tablename__ = "snapshot_stats"

    snapshot_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_snapshots.snapshot_id", ondelete="CASCADE"), primary_key=True
    )
    dataset: Mapped[str] = mapped_column(String(8), primary_key=True)
    split: Mapped[str] = mapped_column(String(5), primary_key=True)
    n_patents: Mapped[int] = mapped_column(Integer)
    n_labels: Mapped[int] = mapped_column(Integer)
    labels_per_patent: Mapped[float] = mapped_column(Float)
    n_unseen_labels: Mapped[int] = mapped_column(Integer, default=0)
    n_unseen_assignments: Mapped[int] = mapped_column(Integer, default=0)


class SnapshotLabel(Base):
    """The label space of a dataset: subclasses seen in its train split, with their output index."""

    __tablename__ = "snapshot_labels"

    snapshot_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_snapshots.snapshot_id", ondelete="CASCADE"), primary_key=True
    )
    dataset: Mapped[str] = mapped_column(String(8), primary_key=True)
    label_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    subclass: Mapped[str] = mapped_column(String(4))
    n_train: Mapped[int] = mapped_column(Integer)


# --- runs and metrics ---------------------------------------------------------------------------


class Run(Base):
    """One training run of one variant (encoder x loss x dataset) on one snapshot."""

    __tablename__ = "runs"

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(Text)
    encoder: Mapped[str] = mapped_column(Text)
    loss: Mapped[str | None] = mapped_column(Text)
    dataset: Mapped[str] = mapped_column(String(8))
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("dataset_snapshots.snapshot_id"))
    status: Mapped[str] = mapped_column(String(12), default="running")
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    device: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    n_params: Mapped[int | None] = mapped_column(BigInteger)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    train_seconds: Mapped[float | None] = mapped_column(Float)
    #: Where training wrote the artifact on its own host (informational: other hosts fetch it from the store).
    artifact_dir: Mapped[str | None] = mapped_column(Text)
    #: The artifact in the model store: ``candidates/<artifact_id>/`` of ``artifact_store`` (a store URI),
    #: whose manifest has ``artifact_sha256``. Evaluation, blends and promotion fetch it by this id.
    artifact_store: Mapped[str | None] = mapped_column(Text)
    artifact_id: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    #: The Airflow task instance that made the run (empty for CLI runs); a retry continues the same row.
    dag_id: Mapped[str | None] = mapped_column(Text)
    dag_run_id: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(Text)
    map_index: Mapped[int | None] = mapped_column(Integer)
    try_number: Mapped[int | None] = mapped_column(Integer)
    decision_rule: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    #: The name of ``decision_rule`` (``t0.5``, ``tuned``, ``per_label``): the run's score is its
    #: ``run_metrics`` rows under this rule, on every screen (patentml.db.results.run_scores).
    rule: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("status IN ('running', 'succeeded', 'failed', 'interrupted')", name="status"),
        Index("ix_runs_variant", "variant", "started_at"),
        Index("ix_runs_origin", "dag_id", "dag_run_id", "task_id", "map_index"),
    )


class RunEpoch(Base):
    """Per-epoch losses and the validation metric early stopping rests on."""

    __tablename__ = "run_epochs"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float)
    valid_loss: Mapped[float | None] = mapped_column(Float)
    valid_f1: Mapped[float | None] = mapped_column(Float)
    valid_p_at_1: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    patents_per_second: Mapped[float | None] = mapped_column(Float)


class RunMetric(Base):
    """Headline metrics of a run on a split under one decision rule (``t0.5``, ``tuned``, ``per_label``)."""

    __tablename__ = "run_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(5), primary_key=True)
    rule: Mapped[str] = mapped_column(String(16), primary_key=True)
    threshold: Mapped[float | None] = mapped_column(Float)
    keep_top: Mapped[bool] = mapped_column(Boolean, default=False)
    #: With keep_top: labels scoring at least this share of the patent's best score count too (0: none).
    top_ratio: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    precision: Mapped[float] = mapped_column(Float)
    recall: Mapped[float] = mapped_column(Float)
    f1: Mapped[float] = mapped_column(Float)
    p_at_1: Mapped[float] = mapped_column(Float)
    r_at_1: Mapped[float] = mapped_column(Float)
    f1_at_1: Mapped[float] = mapped_column(Float)
    p_at_5: Mapped[float] = mapped_column(Float)
    r_at_5: Mapped[float] = mapped_column(Float)
    f1_at_5: Mapped[float] = mapped_column(Float)
    mean_pred_labels: Mapped[float] = mapped_column(Float)
    mean_true_labels: Mapped[float] = mapped_column(Float)
    empty_share: Mapped[float] = mapped_column(Float)
    n_patents: Mapped[int] = mapped_column(Integer)
    n_unseen_labels: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    predict_seconds: Mapped[float | None] = mapped_column(Float)
    evaluated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class SectionMetric(Base):
    """Per CPC section (A-H, Y) scores of a run (paper Table 3)."""

    __tablename__ = "section_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(5), primary_key=True)
    rule: Mapped[str] = mapped_column(String(16), primary_key=True)
    section: Mapped[str] = mapped_column(String(1), primary_key=True)
    precision: Mapped[float] = mapped_column(Float)
    recall: Mapped[float] = mapped_column(Float)
    f1: Mapped[float] = mapped_column(Float)
    n_patents: Mapped[int] = mapped_column(Integer)


class LabelMetric(Base):
    """Per subclass scores of a run."""

    __tablename__ = "label_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(5), primary_key=True)
    rule: Mapped[str] = mapped_column(String(16), primary_key=True)
    subclass: Mapped[str] = mapped_column(String(4), primary_key=True)
    precision: Mapped[float] = mapped_column(Float)
    recall: Mapped[float] = mapped_column(Float)
    f1: Mapped[float] = mapped_column(Float)
    support: Mapped[int] = mapped_column(Integer)
    n_predicted: Mapped[int] = mapped_column(Integer)


class Prediction(Base):
    """Predicted vs true labels of each test patent, under the run's chosen decision rule."""

    __tablename__ = "predictions"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    patent_id: Mapped[str] = mapped_column(Text, primary_key=True)
    true_labels: Mapped[list[str]] = mapped_column(ARRAY(Text))
    pred_labels: Mapped[list[str]] = mapped_column(ARRAY(Text))
    top_scores: Mapped[dict[str, Any]] = mapped_column(JSONB)



# --- suggestions --------------------------------------------------------------------------------


class PatentSuggestion(Base):
    """A model's ranked label suggestions for a patent (``patentml score``): its top-k, plus any further label
    its decision rule selects, so the ``selected`` rows are the model's whole decision for the patent."""

    __tablename__ = "patent_suggestions"

    patent_id: Mapped[str] = mapped_column(ForeignKey("patents.patent_id", ondelete="CASCADE"), primary_key=True)
    #: The store's model id (``tfidf-svm-full-r12-1a2b3c4d``); no foreign key: a champion scores against any
    #: database, also one that never registered it.
    model_id: Mapped[str] = mapped_column(Text, primary_key=True)
    #: 1 = the model's best label.
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    subclass: Mapped[str] = mapped_column(String(4))
    score: Mapped[float] = mapped_column(Float)
    #: The model's own decision rule picks this label (what ``predict`` lists under ``labels``).
    selected: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())

    __table_args__ = (
        CheckConstraint("rank >= 1", name="rank"),
        Index("ix_patent_suggestions_subclass", "subclass", "model_id"),
        Index("ix_patent_suggestions_model", "model_id", "created_at"),
    )

# --- models and promotion -----------------------------------------------------------------------


class ModelRow(Base):
    """A model artifact in the store, under its own never-overwritten id."""

    __tablename__ = "models"

    model_id: Mapped[str] = mapped_column(Text, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.run_id", ondelete="SET NULL"))
    variant: Mapped[str] = mapped_column(Text)
    snapshot_id: Mapped[int | None] = mapped_column(Integer)
    store_uri: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class Promotion(Base):
    """Every promotion decision, promoted or not, with both scores and the reason."""

    __tablename__ = "promotions"

    promotion_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    decided_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    action: Mapped[str] = mapped_column(String(12))
    promoted: Mapped[bool] = mapped_column(Boolean)
    challenger_model_id: Mapped[str | None] = mapped_column(Text)
    challenger_run_id: Mapped[int | None] = mapped_column(Integer)
    champion_before: Mapped[str | None] = mapped_column(Text)
    champion_after: Mapped[str | None] = mapped_column(Text)
    metric: Mapped[str] = mapped_column(Text)
    challenger_score: Mapped[float | None] = mapped_column(Float)
    champion_score: Mapped[float | None] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float)
    snapshot_id: Mapped[int | None] = mapped_column(Integer)
    store_uri: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("action IN ('first', 'promote', 'keep', 'rollback', 'none')", name="action"),
    )


class TextEmbedding(Base):
    """A cached sentence embedding (float16 bytes) of one text under one encoder."""

    __tablename__ = "text_embeddings"

    encoder: Mapped[str] = mapped_column(Text, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
