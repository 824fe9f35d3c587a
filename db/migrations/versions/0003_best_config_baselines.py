"""best configs keep every baseline timed beside the search

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tuner_best_configs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('baselines_us', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tuner_best_configs', schema=None) as batch_op:
        batch_op.drop_column('baselines_us')
