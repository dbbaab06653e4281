"""Schema migrations on a database that already holds data: revision 0002 gives requests a
fingerprint (a transactionID may now name several) and removes the challenge passwords that
revision 0001 stored in clear, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AttributeOID, NameOID

from scepd.store import Store

SECRET = "0001-stored-this-in-clear"


def csr_with_challenge() -> bytes:
    key = rsa.generate_private_key(65537, 2048)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy-device")]))
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, SECRET.encode())
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.DER)
    )


def fill_revision_0001(store: Store, der: bytes) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with store.engine.begin() as db:
        db.execute(sa.text(
            "INSERT INTO transactions (transaction_id, message_type, status, subject, template, public_key_sha256, "
            "signer_key_sha256, csr_der, created_at, updated_at) VALUES "
            "('LEGACY-1', 'PKCS_REQ', 'pending', 'CN=legacy-device', 'T', 'k', 's', :der, :now, :now)"),
            {"der": der, "now": now})
        db.execute(sa.text(
            "INSERT INTO notifications (kind, transaction_id, payload, created_at) VALUES ('success', 'LEGACY-1', :p, :now)"),
            {"p": json.dumps({"transactionId": "LEGACY-1", "certificateRequest": base64.b64encode(der).decode()}), "now": now})


def check_upgraded(store: Store) -> None:
    assert store.check_schema() == []
    record = store.find_transaction("LEGACY-1")
    assert record is not None and record.status == "pending"
    assert SECRET.encode() not in record.csr_der
    assert x509.load_der_x509_csr(record.csr_der).subject.rfc4514_string() == "CN=legacy-device"
    payload = store.notifications("LEGACY-1")[0]["payload"]
    assert SECRET.encode() not in base64.b64decode(payload["certificateRequest"])
    # A transactionID may now carry a second request beside the first.
    with store.unit_of_work() as uow:
        from scepd.store import TransactionRecord

        uow.add_transaction(TransactionRecord("LEGACY-1", "RENEWAL_REQ", "issued", "CN=legacy-device", "T", "k", "s",
                                              b"\x30\x00", request_sha256="f" * 64))
    assert [r.message_type for r in store.find_requests("LEGACY-1")] == ["RENEWAL_REQ", "PKCS_REQ"]


def test_0002_on_sqlite_keeps_rows_and_strips_challenges(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    store.upgrade("0001")
    fill_revision_0001(store, csr_with_challenge())
    store.upgrade()
    check_upgraded(store)


def test_0002_on_postgresql(fresh_postgres):
    store = Store(fresh_postgres)
    store.upgrade("0001")
    fill_revision_0001(store, csr_with_challenge())
    store.upgrade()
    check_upgraded(store)
    store.dispose()


@pytest.mark.parametrize("stored", [b"not DER at all"])
def test_0002_leaves_an_unreadable_stored_request_as_it_was(tmp_path, stored):
    store = Store(f"sqlite:///{tmp_path / 'odd.db'}")
    store.upgrade("0001")
    fill_revision_0001(store, stored)
    store.upgrade()
    assert store.find_transaction("LEGACY-1").csr_der == stored
