"""profile runs, hot ops, consistency results

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tuner_profile_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('environment_id', sa.Integer(), nullable=False),
    sa.Column('workloads', sa.String(length=64), nullable=False),
    sa.Column('scale', sa.Float(), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('device', sa.String(length=16), nullable=False),
    sa.Column('time_source', sa.String(length=8), nullable=False),
    sa.Column('flaggems', sa.Boolean(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('model', sa.JSON(), nullable=False),
    sa.Column('trace_path', sa.Text(), nullable=True),
    sa.Column('total_us', sa.Float(), nullable=False),
    sa.Column('overhead_ratio', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['environment_id'], ['tuner_environments.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('tuner_hot_ops',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('profile_run_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('op', sa.String(length=128), nullable=False),
    sa.Column('shapes', sa.Text(), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('kernel', sa.Text(), nullable=False),
    sa.Column('calls', sa.Integer(), nullable=False),
    sa.Column('total_us', sa.Float(), nullable=False),
    sa.Column('share', sa.Float(), nullable=False),
    sa.Column('tunable', sa.String(length=32), nullable=False),
    sa.Column('key', sa.JSON(), nullable=True),
    sa.Column('predicted_gain_us', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['profile_run_id'], ['tuner_profile_runs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tuner_hot_ops', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tuner_hot_ops_profile_run_id'), ['profile_run_id'], unique=False)

    op.create_table('tuner_consistency_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('profile_run_id', sa.Integer(), nullable=True),
    sa.Column('environment_id', sa.Integer(), nullable=False),
    sa.Column('op', sa.String(length=128), nullable=False),
    sa.Column('gems_fn', sa.String(length=128), nullable=True),
    sa.Column('inputs', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('max_abs_error', sa.Float(), nullable=True),
    sa.Column('rel_error', sa.Float(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('candidate', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['environment_id'], ['tuner_environments.id'], ),
    sa.ForeignKeyConstraint(['profile_run_id'], ['tuner_profile_runs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tuner_consistency_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tuner_consistency_results_environment_id'), ['environment_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tuner_consistency_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tuner_consistency_results_environment_id'))

    op.drop_table('tuner_consistency_results')
    with op.batch_alter_table('tuner_hot_ops', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tuner_hot_ops_profile_run_id'))

    op.drop_table('tuner_hot_ops')
    op.drop_table('tuner_profile_runs')
