"""requests by transactionID and fingerprint; no challengePassword kept in stored requests

Revision ID: 0002
Revises: 0001

A transactionID is repeated by a same-key renewal, so `transactions` gets a surrogate key and
a unique (transaction_id, request_sha256). Rows of revision 0001 have no fingerprint: each
gets "legacy" (unique, since their IDs were), which no new request matches (their CertPolls still find them by ID).
The stored requests and the success notifications queued under 0001 held the challenge
password in clear; it is removed here.
"""

import base64
import binascii
import json

import sqlalchemy as sa
from alembic import op

import scepd.store.models
from scepd.protocol.csr import without_challenge_password
from scepd.protocol.errors import ProtocolError

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_COLUMNS = (
    "transaction_id, message_type, status, subject, template, public_key_sha256, signer_key_sha256, "
    "csr_der, renewal_of, client, certificate_serial, reason, created_at, updated_at"
)


def _stripped(der: bytes) -> bytes:
    try:
        return without_challenge_password(der)
    except ProtocolError:
        return der  # unreadable: it was never parsed as a request either


def upgrade() -> None:
    op.create_table('transactions_0002',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('transaction_id', sa.String(length=128), nullable=False),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('message_type', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.String(length=1024), nullable=False),
    sa.Column('template', sa.String(length=128), nullable=False),
    sa.Column('public_key_sha256', sa.String(length=64), nullable=False),
    sa.Column('signer_key_sha256', sa.String(length=64), nullable=False),
    sa.Column('csr_der', sa.LargeBinary(), nullable=False),
    sa.Column('renewal_of', sa.String(length=64), nullable=True),
    sa.Column('client', sa.String(length=64), nullable=True),
    sa.Column('certificate_serial', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', scepd.store.models.UTCDateTime(), nullable=False),
    sa.Column('updated_at', scepd.store.models.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['certificate_serial'], ['certificates.serial']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('transaction_id', 'request_sha256'),
    )
    op.execute(
        f"INSERT INTO transactions_0002 (request_sha256, {_COLUMNS}) "
        f"SELECT 'legacy', {_COLUMNS} FROM transactions"
    )
    op.drop_table('transactions')
    op.rename_table('transactions_0002', 'transactions')
    op.create_index('ix_transactions_transaction_id', 'transactions', ['transaction_id'], unique=False)
    op.create_index('ix_transactions_status', 'transactions', ['status'], unique=False)
    connection = op.get_bind()

    for row in connection.execute(sa.text("SELECT id, csr_der FROM transactions")).all():
        stripped = _stripped(row.csr_der)
        if stripped != row.csr_der:
            connection.execute(sa.text("UPDATE transactions SET csr_der = :der WHERE id = :id"),
                               {"der": stripped, "id": row.id})
    for row in connection.execute(sa.text("SELECT id, payload FROM notifications")).all():
        payload = json.loads(row.payload)
        request = payload.get("certificateRequest") if isinstance(payload, dict) else None
        if not isinstance(request, str):
            continue
        try:
            der = base64.b64decode(request, validate=True)
        except (binascii.Error, ValueError):
            continue
        stripped = _stripped(der)
        if stripped != der:
            payload["certificateRequest"] = base64.b64encode(stripped).decode("ascii")
            connection.execute(sa.text("UPDATE notifications SET payload = :payload WHERE id = :id"),
                               {"payload": json.dumps(payload), "id": row.id})


def downgrade() -> None:
    raise RuntimeError("revision 0002 cannot be undone: requests that share a transactionID would collide")
