"""run_metrics.top_ratio: the share of a patent's best score at which a tuned rule also keeps a label (0: none)

Revision ID: 0009_top_ratio
Revises: 0008_suggestions
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_top_ratio"
down_revision = "0008_suggestions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("run_metrics", sa.Column("top_ratio", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("run_metrics", "top_ratio")
