"""Ingest: partial batches, unlabelled counts, source positions; fewer checks and indexes per stored label

Revision ID: 0004_ingest
Revises: 0003
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0004_ingest"
down_revision = "0003"
branch_labels = None
depends_on = None

_FKS = (
    ("patent_labels", "fk_patent_labels_patent_id_patents"),
    ("patent_sources", "fk_patent_sources_patent_id_patents"),
)


def upgrade() -> None:
    op.drop_constraint(op.f("ck_ingest_batches_status"), "ingest_batches", type_="check")
    op.create_check_constraint(
        op.f("ck_ingest_batches_status"), "ingest_batches", "status IN ('running', 'succeeded', 'partial', 'failed')"
    )
    op.add_column("ingest_batches", sa.Column("n_unlabelled", sa.Integer(), server_default="0", nullable=False))
    op.add_column("patent_sources", sa.Column("position", sa.Text(), nullable=True))
    # The loader writes a patent's labels and sources in the transaction that writes the patent, and
    # nothing deletes patents; a per-row foreign-key check cost about a third of a bulk load.
    for table, name in _FKS:
        op.drop_constraint(op.f(name), table, type_="foreignkey")
    # No query of PatentML's or of docs/sql.md looks labels up by subclass; the index cost a fifth
    # of the server's time in a bulk load.
    op.drop_index("ix_patent_labels_subclass", table_name="patent_labels")


def downgrade() -> None:
    op.create_index("ix_patent_labels_subclass", "patent_labels", ["subclass", "scheme"], unique=False)
    op.execute("DELETE FROM patent_labels l WHERE NOT EXISTS (SELECT 1 FROM patents p WHERE p.patent_id = l.patent_id)")
    op.execute("DELETE FROM patent_sources s WHERE NOT EXISTS (SELECT 1 FROM patents p WHERE p.patent_id = s.patent_id)")
    for table, name in _FKS:
        op.create_foreign_key(op.f(name), table, "patents", ["patent_id"], ["patent_id"], ondelete="CASCADE")
    op.drop_column("patent_sources", "position")
    op.drop_column("ingest_batches", "n_unlabelled")
    op.execute("UPDATE ingest_batches SET status = 'failed' WHERE status = 'partial'")
    op.drop_constraint(op.f("ck_ingest_batches_status"), "ingest_batches", type_="check")
    op.create_check_constraint(
        op.f("ck_ingest_batches_status"), "ingest_batches", "status IN ('running', 'succeeded', 'failed')"
    )
