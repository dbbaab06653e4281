"""CertPoll, GetCert and GetCRL: what a client may ask about what was issued."""

from __future__ import annotations

from cryptography import x509

from scepd.ca.crl import CrlPublisher
from scepd.clock import Clock
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.protocol.fingerprints import public_key_sha256
from scepd.protocol.requests import CertPoll, GetCert, GetCrl
from scepd.service.authorities import Authorities
from scepd.service.issuance import Issuance
from scepd.service.outcome import Outcome
from scepd.service.renew import signer_record
from scepd.store import Store
from scepd.store.states import CertificateState


class Retrieval:
    def __init__(self, *, store: Store, authorities: Authorities, crls: CrlPublisher, issuance: Issuance,
                 clock: Clock) -> None:
        self.store = store
        self.authorities = authorities
        self.crls = crls
        self.issuance = issuance
        self.clock = clock

    def poll(self, request: CertPoll) -> Outcome:
        """The transactionID names the request; the issuer and subject only repeat it."""
        exchange = request.exchange
        requests = self.store.find_requests(exchange.transaction_id)
        if not requests:
            return Outcome.refuse(ErrorCode.TRANSACTION_UNKNOWN, f"no request has transactionID {exchange.transaction_id}")
        # Several requests may share the ID (a same-key renewal); a poll asks about the newest
        # one its signer made, and about nobody else's.
        signer = public_key_sha256(exchange.signer.public_key())
        mine = next((r for r in requests if r.signer_key_sha256 == signer), None)
        if mine is None:
            return Outcome.refuse(ErrorCode.POLL_SIGNER_MISMATCH,
                                  "the CertPoll is signed by another key than the request it asks about")
        return self.issuance.status_of(mine)

    def retrieve(self, request: GetCert | GetCrl) -> Outcome:
        """GetCert and GetCRL, answered only to a signer holding a valid certificate of ours."""
        exchange = request.exchange
        requester = signer_record(self.store, self.authorities, exchange.signer, self.clock)
        if isinstance(requester, Refusal):
            return Outcome.failure(requester)
        if requester is None:
            return Outcome.refuse(ErrorCode.REQUESTER_NOT_AUTHORIZED,
                                  f"{exchange.message_type.name} must be signed by a valid certificate this CA issued")
        record = self.store.find_certificate(format(request.serial, "x"))
        ca = self.authorities.ca_for_key_id(record.issuer_key_id) if record else None
        if record is None or ca is None or ca.certificate.subject.public_bytes() != request.issuer:
            return Outcome.refuse(ErrorCode.CERTIFICATE_UNKNOWN, f"this CA issued no certificate with serial {request.serial:x}")
        if isinstance(request, GetCrl):
            return Outcome.crl(self.crls.current(ca))
        if record.status == CertificateState.REVOKED:
            return Outcome.refuse(ErrorCode.ISSUED_CERTIFICATE_REVOKED, f"certificate {record.serial} was revoked")
        if record.not_after <= self.clock.now():
            return Outcome.refuse(ErrorCode.ISSUED_CERTIFICATE_EXPIRED,
                                  f"certificate {record.serial} expired on {record.not_after:%Y-%m-%d}")
        return Outcome.success(x509.load_der_x509_certificate(record.der))
