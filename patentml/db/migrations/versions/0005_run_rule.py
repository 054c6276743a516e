"""runs.rule: the decision rule a run chose on validation; its run_metrics rows under that rule are the run's score

Revision ID: 0005_run_rule
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_run_rule"
down_revision = "0004_ingest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("rule", sa.String(length=16), nullable=True))
    # What patentml.decision.rule_name() says of the stored rule, for runs trained before this column.
    op.execute(
        """
        UPDATE runs SET rule = CASE
            WHEN decision_rule IS NULL THEN 't0.5'
            WHEN jsonb_typeof(decision_rule -> 'per_label') = 'array'
                 AND jsonb_array_length(decision_rule -> 'per_label') > 0
                 AND (decision_rule ->> 'use_per_label')::boolean THEN 'per_label'
            WHEN decision_rule ->> 'name' = 't0.5' THEN 't0.5'
            ELSE 'tuned' END
        WHERE status = 'succeeded'
        """
    )


def downgrade() -> None:
    op.drop_column("runs", "rule")
