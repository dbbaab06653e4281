"""leases: background tasks one server at a time runs (the Intune revocation poll)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

import scepd.store.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('leases',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('until', scepd.store.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('leases')
