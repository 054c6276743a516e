"""Suggestions: a model's ranked labels per patent (``patentml score``)

Revision ID: 0008_suggestions
Revises: 0007_run_origin
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_suggestions"
down_revision = "0007_run_origin"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patent_suggestions",
        sa.Column("patent_id", sa.Text(), nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("subclass", sa.String(length=4), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("selected", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("rank >= 1", name=op.f("ck_patent_suggestions_rank")),
        sa.ForeignKeyConstraint(["patent_id"], ["patents.patent_id"], ondelete="CASCADE",
                                name=op.f("fk_patent_suggestions_patent_id_patents")),
        sa.PrimaryKeyConstraint("patent_id", "model_id", "rank", name=op.f("pk_patent_suggestions")),
    )
    op.create_index("ix_patent_suggestions_subclass", "patent_suggestions", ["subclass", "model_id"])
    op.create_index("ix_patent_suggestions_model", "patent_suggestions", ["model_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_patent_suggestions_model", table_name="patent_suggestions")
    op.drop_index("ix_patent_suggestions_subclass", table_name="patent_suggestions")
    op.drop_table("patent_suggestions")
