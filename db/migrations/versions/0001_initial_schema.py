"""initial schema

Revision ID: 0001
Revises: 
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tuner_environments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=16), nullable=False),
    sa.Column('gpu_name', sa.String(length=128), nullable=True),
    sa.Column('sm_count', sa.Integer(), nullable=True),
    sa.Column('memory_bytes', sa.BigInteger(), nullable=True),
    sa.Column('sm_clock_max_mhz', sa.Integer(), nullable=True),
    sa.Column('mem_clock_max_mhz', sa.Integer(), nullable=True),
    sa.Column('driver', sa.String(length=64), nullable=True),
    sa.Column('cuda', sa.String(length=32), nullable=True),
    sa.Column('torch', sa.String(length=64), nullable=False),
    sa.Column('triton', sa.String(length=32), nullable=False),
    sa.Column('flag_gems', sa.String(length=32), nullable=True),
    sa.Column('vllm', sa.String(length=32), nullable=True),
    sa.Column('python', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tuner_environments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tuner_environments_fingerprint'), ['fingerprint'], unique=True)

    op.create_table('tuner_tuning_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('environment_id', sa.Integer(), nullable=False),
    sa.Column('kernel', sa.String(length=64), nullable=False),
    sa.Column('sampler', sa.String(length=16), nullable=False),
    sa.Column('device', sa.String(length=16), nullable=False),
    sa.Column('trials_budget', sa.Integer(), nullable=True),
    sa.Column('timeout_s', sa.Float(), nullable=True),
    sa.Column('compile_workers', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['environment_id'], ['tuner_environments.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('tuner_best_configs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('environment_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('kernel', sa.String(length=64), nullable=False),
    sa.Column('kernel_source_hash', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=256), nullable=False),
    sa.Column('key_values', sa.JSON(), nullable=False),
    sa.Column('dtype', sa.String(length=8), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('time_us', sa.Float(), nullable=False),
    sa.Column('untuned_us', sa.Float(), nullable=True),
    sa.Column('native_us', sa.Float(), nullable=True),
    sa.Column('speedup_vs_untuned', sa.Float(), nullable=True),
    sa.Column('speedup_vs_native', sa.Float(), nullable=True),
    sa.Column('max_abs_error', sa.Float(), nullable=False),
    sa.Column('rel_error', sa.Float(), nullable=False),
    sa.Column('trials_used', sa.Integer(), nullable=False),
    sa.Column('timing', sa.String(length=32), nullable=False),
    sa.Column('study_name', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['environment_id'], ['tuner_environments.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['tuner_tuning_runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('environment_id', 'kernel', 'key', 'dtype', name='uq_best_key')
    )


def downgrade() -> None:
    op.drop_table('tuner_best_configs')
    op.drop_table('tuner_tuning_runs')
    with op.batch_alter_table('tuner_environments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tuner_environments_fingerprint'))

    op.drop_table('tuner_environments')
