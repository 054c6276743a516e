"""Sentence-embedding cache

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 15:43:11.182930
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('text_embeddings',
    sa.Column('encoder', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('encoder', 'content_hash', name=op.f('pk_text_embeddings'))
    )



def downgrade() -> None:

    op.drop_table('text_embeddings')

