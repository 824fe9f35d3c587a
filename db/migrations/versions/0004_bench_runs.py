"""serving benchmarks: one row per (bench, mode, concurrency)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tuner_bench_runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('environment_id', sa.Integer(), nullable=False),
        sa.Column('bench_id', sa.String(length=64), nullable=False),
        sa.Column('engine', sa.String(length=32), nullable=False),
        sa.Column('model', sa.Text(), nullable=False),
        sa.Column('mode', sa.String(length=16), nullable=False),
        sa.Column('concurrency', sa.Integer(), nullable=False),
        sa.Column('output_tok_s', sa.Float(), nullable=True),
        sa.Column('output_tok_s_cold', sa.Float(), nullable=True),
        sa.Column('start_s', sa.Float(), nullable=True),
        sa.Column('autotunes', sa.Integer(), nullable=True),
        sa.Column('jit_compiles', sa.Integer(), nullable=True),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['environment_id'], ['tuner_environments.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_tuner_bench_runs_environment_id', 'tuner_bench_runs', ['environment_id'])
    op.create_index('ix_tuner_bench_runs_bench_id', 'tuner_bench_runs', ['bench_id'])


def downgrade() -> None:
    op.drop_index('ix_tuner_bench_runs_bench_id', table_name='tuner_bench_runs')
    op.drop_index('ix_tuner_bench_runs_environment_id', table_name='tuner_bench_runs')
    op.drop_table('tuner_bench_runs')
