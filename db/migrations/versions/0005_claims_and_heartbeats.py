"""several processes on one study: config claims, run heartbeats, provisional best configs

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tuner_claims',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_name', sa.String(length=256), nullable=False),
        sa.Column('config_hash', sa.String(length=64), nullable=False),
        sa.Column('config', sa.Text(), nullable=False),
        sa.Column('trial_number', sa.Integer(), nullable=False),
        sa.Column('owner', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('study_name', 'config_hash', name='uq_claim'),
    )
    with op.batch_alter_table('tuner_tuning_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('owner', sa.String(length=128), nullable=True))
    with op.batch_alter_table('tuner_best_configs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('confirmed', sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table('tuner_best_configs', schema=None) as batch_op:
        batch_op.drop_column('confirmed')
    with op.batch_alter_table('tuner_tuning_runs', schema=None) as batch_op:
        batch_op.drop_column('owner')
        batch_op.drop_column('heartbeat_at')
    op.drop_table('tuner_claims')
