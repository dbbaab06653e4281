"""Transaction and certificate states: enums whose values are the strings the database has
always held, moving only along the one table of transitions, and the store's conditional
UPDATEs that follow it."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
import sqlalchemy as sa

from scepd.store import CertificateRecord, NotificationKind, Store, TransactionRecord
from scepd.store.states import (
    TRANSITIONS,
    CertificateState,
    TransactionState,
    TransitionRefused,
    allowed,
    check_transition,
    sources,
)

MOVES = {
    (TransactionState.PENDING, TransactionState.ISSUED),
    (TransactionState.PENDING, TransactionState.DENIED),
    (CertificateState.VALID, CertificateState.REVOKED),
}


def test_the_values_are_the_stored_strings():
    assert [s.value for s in TransactionState] == ["pending", "issued", "denied"]
    assert [s.value for s in CertificateState] == ["valid", "revoked"]
    assert [k.value for k in NotificationKind] == ["success", "failure", "received-success", "received-failure"]
    assert TransactionState.PENDING == "pending" and f"{CertificateState.REVOKED}" == "revoked"


@pytest.mark.parametrize("old, new", list(itertools.product([*TransactionState, *CertificateState], repeat=2)))
def test_only_the_moves_of_the_table_are_allowed(old, new):
    assert allowed(old, new) == ((old, new) in MOVES)
    if (old, new) in MOVES:
        check_transition(old, new)
    else:
        with pytest.raises(TransitionRefused):
            check_transition(old, new)


def test_every_state_is_in_the_table_and_decided_states_are_final():
    assert set(TRANSITIONS) == {*TransactionState, *CertificateState}
    for final in (TransactionState.ISSUED, TransactionState.DENIED, CertificateState.REVOKED):
        assert TRANSITIONS[final] == frozenset()
    assert sources(TransactionState.ISSUED) == (TransactionState.PENDING,)
    assert sources(CertificateState.REVOKED) == (CertificateState.VALID,)
    with pytest.raises(TransitionRefused):
        sources(TransactionState.PENDING)  # nothing becomes pending: a request starts so


def test_received_notifications_are_named_from_the_outcome():
    assert NotificationKind.received("success") is NotificationKind.RECEIVED_SUCCESS
    assert NotificationKind.received("failure") is NotificationKind.RECEIVED_FAILURE
    with pytest.raises(ValueError):
        NotificationKind.received("received-success")


def _request(transaction_id: str, status) -> TransactionRecord:
    return TransactionRecord(transaction_id, "PKCS_REQ", status, "CN=s", "T", "k" * 64, "s" * 64, b"\x30\x00",
                             request_sha256=transaction_id.ljust(64, "0"))


def _certificate(serial: str) -> CertificateRecord:
    now = dt.datetime.now(dt.timezone.utc)
    return CertificateRecord(serial, "ca", "CN=s", "T", now, now + dt.timedelta(days=1), serial.ljust(64, "0"), b"x")


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'states.db'}")
    store.upgrade()
    yield store
    store.dispose()


def test_records_carry_the_enums_and_the_rows_the_strings(store):
    with store.unit_of_work() as uow:
        uow.add_certificate(_certificate("a1"))
        uow.add_transaction(_request("T-1", "pending"))  # a plain string is read as the state it names
        uow.add_notification(NotificationKind.SUCCESS, "T-1", {}, ())
    record = store.find_transaction("T-1")
    assert record.status is TransactionState.PENDING
    assert store.find_certificate("a1").status is CertificateState.VALID
    assert store.notifications("T-1")[0]["kind"] is NotificationKind.SUCCESS
    with store.engine.connect() as db:
        row = db.execute(sa.text("SELECT t.status, c.status, n.kind FROM transactions t, certificates c, notifications n")).one()
    assert tuple(row) == ("pending", "valid", "success")


def test_a_state_outside_the_enum_is_never_written(store):
    with pytest.raises(sa.exc.StatementError, match="approved"):
        with store.unit_of_work() as uow:
            uow.add_transaction(_request("T-2", "approved"))
    assert store.find_transaction("T-2") is None


def test_a_request_is_decided_once_and_only_from_pending(store):
    with store.unit_of_work() as uow:
        uow.add_transaction(_request("T-3", TransactionState.PENDING))
    with store.unit_of_work() as uow:
        assert uow.decide_pending("T-3", TransactionState.DENIED, reason="no")
        assert not uow.decide_pending("T-3", TransactionState.ISSUED)  # denied is final
        with pytest.raises(TransitionRefused):
            uow.decide_pending("T-3", TransactionState.PENDING)
    assert store.find_transaction("T-3").status is TransactionState.DENIED


def test_a_certificate_is_revoked_once(store):
    with store.unit_of_work() as uow:
        uow.add_certificate(_certificate("b2"))
    with store.unit_of_work() as uow:
        assert uow.revoke("b2", "keyCompromise")
        assert not uow.revoke("b2", "superseded")
    assert store.find_certificate("b2").revocation_reason == "keyCompromise"
    assert [c.serial for c in store.list_certificates(CertificateState.REVOKED)] == ["b2"]
    assert store.list_certificates("valid") == []


def test_a_rolled_back_unit_leaves_nothing(store):
    with store.unit_of_work() as uow:
        uow.add_transaction(_request("T-4", TransactionState.ISSUED))
        uow.rollback()
    assert store.find_transaction("T-4") is None
