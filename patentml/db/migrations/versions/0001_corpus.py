"""corpus: patents, labels, ingest batches, rejected records

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 15:20:40.310030
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('ingest_batches',
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('n_read', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_stored', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_updated', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_unchanged', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_rejected', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_skipped', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_labels_dropped', sa.Integer(), server_default='0', nullable=False),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name=op.f('ck_ingest_batches_status')),
    sa.PrimaryKeyConstraint('batch_id', name=op.f('pk_ingest_batches'))
    )
    op.create_table('patents',
    sa.Column('patent_id', sa.Text(), nullable=False),
    sa.Column('title', sa.Text(), nullable=True),
    sa.Column('abstract', sa.Text(), nullable=False),
    sa.Column('date', sa.Date(), nullable=True),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('first_batch_id', sa.Integer(), nullable=True),
    sa.Column('last_batch_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('patent_id', name=op.f('pk_patents'))
    )
    op.create_table('rejected_records',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('position', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('snippet', sa.Text(), nullable=True),
    sa.Column('patent_id', sa.Text(), nullable=True),
    sa.Column('whole', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['ingest_batches.batch_id'], name=op.f('fk_rejected_records_batch_id_ingest_batches'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejected_records'))
    )
    op.create_index(op.f('ix_rejected_records_batch_id'), 'rejected_records', ['batch_id'], unique=False)
    op.create_table('patent_labels',
    sa.Column('patent_id', sa.Text(), nullable=False),
    sa.Column('scheme', sa.String(length=3), nullable=False),
    sa.Column('subclass', sa.String(length=4), nullable=False),
    sa.Column('section', sa.String(length=1), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('is_main', sa.Boolean(), nullable=False),
    sa.CheckConstraint("scheme IN ('CPC', 'IPC')", name=op.f('ck_patent_labels_scheme')),
    sa.CheckConstraint("subclass ~ '^[A-HY][0-9]{2}[A-Z]$'", name=op.f('ck_patent_labels_subclass')),
    sa.ForeignKeyConstraint(['patent_id'], ['patents.patent_id'], name=op.f('fk_patent_labels_patent_id_patents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('patent_id', 'scheme', 'subclass', name=op.f('pk_patent_labels'))
    )
    op.create_index('ix_patent_labels_subclass', 'patent_labels', ['subclass', 'scheme'], unique=False)
    op.create_table('patent_sources',
    sa.Column('patent_id', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['patent_id'], ['patents.patent_id'], name=op.f('fk_patent_sources_patent_id_patents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('patent_id', 'source', name=op.f('pk_patent_sources'))
    )



def downgrade() -> None:

    op.drop_table('patent_sources')
    op.drop_index('ix_patent_labels_subclass', table_name='patent_labels')
    op.drop_table('patent_labels')
    op.drop_index(op.f('ix_rejected_records_batch_id'), table_name='rejected_records')
    op.drop_table('rejected_records')
    op.drop_table('patents')
    op.drop_table('ingest_batches')

