"""Results: dataset snapshots, runs, per-epoch losses, metrics, predictions, models, promotions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:23:49.386827
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('dataset_snapshots',
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('label_scheme', sa.String(length=8), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('snapshot_id', name=op.f('pk_dataset_snapshots'))
    )
    op.create_table('promotions',
    sa.Column('promotion_id', sa.Integer(), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('action', sa.String(length=12), nullable=False),
    sa.Column('promoted', sa.Boolean(), nullable=False),
    sa.Column('challenger_model_id', sa.Text(), nullable=True),
    sa.Column('challenger_run_id', sa.Integer(), nullable=True),
    sa.Column('champion_before', sa.Text(), nullable=True),
    sa.Column('champion_after', sa.Text(), nullable=True),
    sa.Column('metric', sa.Text(), nullable=False),
    sa.Column('challenger_score', sa.Float(), nullable=True),
    sa.Column('champion_score', sa.Float(), nullable=True),
    sa.Column('margin', sa.Float(), nullable=False),
    sa.Column('snapshot_id', sa.Integer(), nullable=True),
    sa.Column('store_uri', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.CheckConstraint("action IN ('first', 'promote', 'keep', 'rollback', 'none')", name=op.f('ck_promotions_action')),
    sa.PrimaryKeyConstraint('promotion_id', name=op.f('pk_promotions'))
    )
    op.create_table('runs',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('variant', sa.Text(), nullable=False),
    sa.Column('encoder', sa.Text(), nullable=False),
    sa.Column('loss', sa.Text(), nullable=True),
    sa.Column('dataset', sa.String(length=8), nullable=False),
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('settings', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('device', sa.Text(), nullable=True),
    sa.Column('host', sa.Text(), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('n_params', sa.BigInteger(), nullable=True),
    sa.Column('epochs_done', sa.Integer(), server_default='0', nullable=False),
    sa.Column('best_epoch', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('train_seconds', sa.Float(), nullable=True),
    sa.Column('artifact_dir', sa.Text(), nullable=True),
    sa.Column('decision_rule', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('running', 'succeeded', 'failed', 'interrupted')", name=op.f('ck_runs_status')),
    sa.ForeignKeyConstraint(['snapshot_id'], ['dataset_snapshots.snapshot_id'], name=op.f('fk_runs_snapshot_id_dataset_snapshots')),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_runs'))
    )
    op.create_index('ix_runs_variant', 'runs', ['variant', 'started_at'], unique=False)
    op.create_table('snapshot_labels',
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('dataset', sa.String(length=8), nullable=False),
    sa.Column('label_index', sa.Integer(), nullable=False),
    sa.Column('subclass', sa.String(length=4), nullable=False),
    sa.Column('n_train', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['snapshot_id'], ['dataset_snapshots.snapshot_id'], name=op.f('fk_snapshot_labels_snapshot_id_dataset_snapshots'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('snapshot_id', 'dataset', 'label_index', name=op.f('pk_snapshot_labels'))
    )
    op.create_table('snapshot_members',
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('patent_id', sa.Text(), nullable=False),
    sa.Column('split', sa.String(length=5), nullable=False),
    sa.Column('in_subset', sa.Boolean(), nullable=False),
    sa.Column('label_scheme', sa.String(length=3), nullable=False),
    sa.Column('labels', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.CheckConstraint("split IN ('train', 'valid', 'test')", name=op.f('ck_snapshot_members_split')),
    sa.ForeignKeyConstraint(['snapshot_id'], ['dataset_snapshots.snapshot_id'], name=op.f('fk_snapshot_members_snapshot_id_dataset_snapshots'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('snapshot_id', 'patent_id', name=op.f('pk_snapshot_members'))
    )
    op.create_index('ix_snapshot_members_split', 'snapshot_members', ['snapshot_id', 'split', 'in_subset'], unique=False)
    op.create_table('snapshot_stats',
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('dataset', sa.String(length=8), nullable=False),
    sa.Column('split', sa.String(length=5), nullable=False),
    sa.Column('n_patents', sa.Integer(), nullable=False),
    sa.Column('n_labels', sa.Integer(), nullable=False),
    sa.Column('labels_per_patent', sa.Float(), nullable=False),
    sa.Column('n_unseen_labels', sa.Integer(), nullable=False),
    sa.Column('n_unseen_assignments', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['snapshot_id'], ['dataset_snapshots.snapshot_id'], name=op.f('fk_snapshot_stats_snapshot_id_dataset_snapshots'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('snapshot_id', 'dataset', 'split', name=op.f('pk_snapshot_stats'))
    )
    op.create_table('label_metrics',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=5), nullable=False),
    sa.Column('rule', sa.String(length=16), nullable=False),
    sa.Column('subclass', sa.String(length=4), nullable=False),
    sa.Column('precision', sa.Float(), nullable=False),
    sa.Column('recall', sa.Float(), nullable=False),
    sa.Column('f1', sa.Float(), nullable=False),
    sa.Column('support', sa.Integer(), nullable=False),
    sa.Column('n_predicted', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_label_metrics_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'split', 'rule', 'subclass', name=op.f('pk_label_metrics'))
    )
    op.create_table('models',
    sa.Column('model_id', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('variant', sa.Text(), nullable=False),
    sa.Column('snapshot_id', sa.Integer(), nullable=True),
    sa.Column('store_uri', sa.Text(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('metrics', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_models_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('model_id', name=op.f('pk_models'))
    )
    op.create_table('predictions',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('patent_id', sa.Text(), nullable=False),
    sa.Column('true_labels', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('pred_labels', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('top_scores', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_predictions_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'patent_id', name=op.f('pk_predictions'))
    )
    op.create_table('run_epochs',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('train_loss', sa.Float(), nullable=True),
    sa.Column('valid_loss', sa.Float(), nullable=True),
    sa.Column('valid_f1', sa.Float(), nullable=True),
    sa.Column('valid_p_at_1', sa.Float(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('patents_per_second', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_run_epochs_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'epoch', name=op.f('pk_run_epochs'))
    )
    op.create_table('run_metrics',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=5), nullable=False),
    sa.Column('rule', sa.String(length=16), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('keep_top', sa.Boolean(), nullable=False),
    sa.Column('precision', sa.Float(), nullable=False),
    sa.Column('recall', sa.Float(), nullable=False),
    sa.Column('f1', sa.Float(), nullable=False),
    sa.Column('p_at_1', sa.Float(), nullable=False),
    sa.Column('r_at_1', sa.Float(), nullable=False),
    sa.Column('f1_at_1', sa.Float(), nullable=False),
    sa.Column('p_at_5', sa.Float(), nullable=False),
    sa.Column('r_at_5', sa.Float(), nullable=False),
    sa.Column('f1_at_5', sa.Float(), nullable=False),
    sa.Column('mean_pred_labels', sa.Float(), nullable=False),
    sa.Column('mean_true_labels', sa.Float(), nullable=False),
    sa.Column('empty_share', sa.Float(), nullable=False),
    sa.Column('n_patents', sa.Integer(), nullable=False),
    sa.Column('n_unseen_labels', sa.Integer(), server_default='0', nullable=False),
    sa.Column('predict_seconds', sa.Float(), nullable=True),
    sa.Column('evaluated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_run_metrics_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'split', 'rule', name=op.f('pk_run_metrics'))
    )
    op.create_table('section_metrics',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=5), nullable=False),
    sa.Column('rule', sa.String(length=16), nullable=False),
    sa.Column('section', sa.String(length=1), nullable=False),
    sa.Column('precision', sa.Float(), nullable=False),
    sa.Column('recall', sa.Float(), nullable=False),
    sa.Column('f1', sa.Float(), nullable=False),
    sa.Column('n_patents', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_section_metrics_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'split', 'rule', 'section', name=op.f('pk_section_metrics'))
    )



def downgrade() -> None:

    op.drop_table('section_metrics')
    op.drop_table('run_metrics')
    op.drop_table('run_epochs')
    op.drop_table('predictions')
    op.drop_table('models')
    op.drop_table('label_metrics')
    op.drop_table('snapshot_stats')
    op.drop_index('ix_snapshot_members_split', table_name='snapshot_members')
    op.drop_table('snapshot_members')
    op.drop_table('snapshot_labels')
    op.drop_index('ix_runs_variant', table_name='runs')
    op.drop_table('runs')
    op.drop_table('promotions')
    op.drop_table('dataset_snapshots')

