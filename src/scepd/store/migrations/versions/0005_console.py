"""console: administrators' accounts and their signed-in sessions

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

import scepd.store.models

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('admin_accounts',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('failed_attempts', sa.Integer(), nullable=False),
    sa.Column('locked_until', scepd.store.models.UTCDateTime(), nullable=True),
    sa.Column('created_at', scepd.store.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name'),
    )
    op.create_table('admin_sessions',
    sa.Column('id_sha256', sa.String(length=64), nullable=False),
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.Column('created_at', scepd.store.models.UTCDateTime(), nullable=False),
    sa.Column('last_seen', scepd.store.models.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account'], ['admin_accounts.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id_sha256'),
    )
    with op.batch_alter_table('admin_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_admin_sessions_account'), ['account'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('admin_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_admin_sessions_account'))
    op.drop_table('admin_sessions')
    op.drop_table('admin_accounts')
