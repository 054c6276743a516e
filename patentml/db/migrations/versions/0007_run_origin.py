"""runs: where the artifact lives in the model store, and which Airflow task instance made the run

Revision ID: 0007_run_origin
Revises: 0005_run_rule
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_run_origin"
down_revision = "0005_run_rule"
branch_labels = None
depends_on = None

ORIGIN = ("dag_id", "dag_run_id", "task_id", "map_index")


def upgrade() -> None:
    # The artifact in the store (candidates/<artifact_id>/ under artifact_store): what every later
    # task fetches by id, so no task relies on the disk of the worker that trained the run.
    op.add_column("runs", sa.Column("artifact_store", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("artifact_id", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("artifact_sha256", sa.String(length=64), nullable=True))
    # The task instance that made the run: a retry of the same task continues the same row.
    op.add_column("runs", sa.Column("dag_id", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("dag_run_id", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("task_id", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("map_index", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("try_number", sa.Integer(), nullable=True))
    op.create_index("ix_runs_origin", "runs", list(ORIGIN))


def downgrade() -> None:
    op.drop_index("ix_runs_origin", table_name="runs")
    for column in ("try_number", *reversed(ORIGIN), "artifact_sha256", "artifact_id", "artifact_store"):
        op.drop_column("runs", column)
