"""PKCSReq and RenewalReq: a resend gets its stored answer; a first enrollment passes the
registration point; a renewal is authenticated by the certificate that signed it and gets no
more than that certificate holds. Either ends issued (or pending) in one unit of work."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.ca.templates import Template
from scepd.challenge import ChallengeRequest, ChallengeValidator, ChallengeVerdict
from scepd.clock import Clock
from scepd.protocol import PkiStatus
from scepd.protocol.csr import CertificationRequest
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.protocol.fingerprints import public_key_sha256
from scepd.protocol.message import Exchange
from scepd.protocol.requests import PkcsReq, RenewalReq
from scepd.service.authorities import Authorities
from scepd.service.issuance import Issuance
from scepd.service.outcome import Outcome
from scepd.service.renew import renewal_refusal, signer_record, widening_refusal
from scepd.service.selection import TemplateChoice
from scepd.store import (
    CertificateRecord,
    IntegrityError,
    Store,
    StoreUnavailable,
    TransactionRecord,
    UnitOfWork,
)
from scepd.store.states import TransactionState

log = logging.getLogger("scepd.service")

# Set in `details` while a request is decided when the registration point accepted it; taken
# out before the request's log line.
_VALIDATED = "_validated"


class DeliveryGate(Protocol):
    """Who must know of a certificate before it is delivered (Intune, in mode = "intune"),
    and of a request it validated that scepd then refused."""

    def delivered(self, record: TransactionRecord, certificate: x509.Certificate) -> Refusal | None:
        """Called after the certificate is committed, before the CertRep is written; a
        refusal withholds (and revokes) it. `record.csr_der` is the request as validated."""

    def failed(self, transaction_id: str, csr_der: bytes, refusal: Refusal) -> None:
        """Called when a request the registration point accepted is refused by scepd."""


def request_fingerprint(exchange: Exchange, stored_csr: bytes) -> str:
    """What makes a request the same request: its message type, its PKCS#10 request (as
    stored, without the challenge) and the certificate that signed it. Only a request with
    the same fingerprint under the same transactionID is a resend."""
    h = hashlib.sha256()
    for part in (exchange.message_type.value.encode(), stored_csr, exchange.signer.public_bytes(Encoding.DER)):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


class Enrollment:
    def __init__(self, *, store: Store, validator: ChallengeValidator, choice: TemplateChoice,
                 issuance: Issuance, authorities: Authorities, clock: Clock, gate: DeliveryGate | None = None) -> None:
        self.store = store
        self.gate = gate
        self.validator = validator
        self.choice = choice
        self.issuance = issuance
        self.authorities = authorities
        self.clock = clock

    def decide(self, request: PkcsReq | RenewalReq, client: str | None, details: dict) -> Outcome:
        csr, exchange = request.csr, request.exchange
        details["subject"] = csr.subject.rfc4514_string()
        refusal = self.choice.subject_refusal(csr)
        if refusal:
            return Outcome.failure(refusal)
        stored_csr = csr.without_challenge  # no challenge is kept in clear
        fingerprint = request_fingerprint(exchange, stored_csr)
        resent = self._stored(exchange.transaction_id, fingerprint)
        if resent is not None:
            return self.issuance.status_of(resent)
        # Anything but a resend is a new request, even under a transactionID seen before: a
        # same-key renewal repeats the enrollment's ID (clients derive it from the key).
        renewed = signer_record(self.store, self.authorities, exchange.signer, self.clock)
        if isinstance(renewed, Refusal):
            return Outcome.failure(renewed)
        if isinstance(request, RenewalReq) and renewed is None:
            return Outcome.refuse(
                ErrorCode.RENEWAL_SIGNER_UNKNOWN,
                "a RenewalReq must be signed by a valid certificate this CA issued; this one is signed by "
                f"'{exchange.signer.subject.rfc4514_string()}'",
            )
        if renewed is not None:
            details["renewal_of"] = renewed.serial
        new = TransactionRecord(
            transaction_id=exchange.transaction_id, message_type=exchange.message_type.name,
            status=TransactionState.ISSUED, subject=csr.subject.rfc4514_string(), template="",
            public_key_sha256=public_key_sha256(csr.public_key), signer_key_sha256=public_key_sha256(exchange.signer.public_key()),
            csr_der=stored_csr, renewal_of=renewed.serial if renewed else None, client=client, request_sha256=fingerprint,
        )
        try:
            outcome, template = self._record(new, csr, renewed, details)
        except IntegrityError:
            # The same request was committed meanwhile (a resend racing the original,
            # perhaps on another server): answer with what was stored.
            details.pop(_VALIDATED, None)
            resent = self._stored(exchange.transaction_id, fingerprint)
            if resent is None:
                raise
            return self.issuance.status_of(resent)
        except Exception as exc:
            if details.pop(_VALIDATED, False) and self.gate is not None:
                self._failed_after_validation(exchange.transaction_id, csr, exc)
            raise
        if self.gate is not None and details.pop(_VALIDATED, False):
            outcome = self._gated(outcome, new, template, csr)
        if renewed is not None and outcome.reply.status is PkiStatus.SUCCESS and template.revoke_on_renewal:
            self.issuance.publish_crl_after_renewal(renewed)
        return outcome

    def _gated(self, outcome: Outcome, new: TransactionRecord, template: Template | None,
               csr: CertificationRequest) -> Outcome:
        """Notify before deliver: the MDM that validated the request is told of its certificate
        before the client gets it (or of scepd's refusal); a certificate it was not told of is
        withheld and revoked."""
        if outcome.reply.status is not PkiStatus.SUCCESS:
            if outcome.refusal is not None:
                self.gate.failed(new.transaction_id, csr.der, outcome.refusal)
            return outcome
        issued = _with(new, template, TransactionState.ISSUED)
        certificate = outcome.reply.certificates[0]
        try:
            # The request as it was validated (with its challenge), for the MDM to match.
            refusal = self.gate.delivered(dataclasses.replace(issued, csr_der=csr.der), certificate)
        except Exception:
            # A bug in telling is still no certificate for a device nobody was told of.
            log.exception("bug while telling of the certificate of %s", issued.transaction_id)
            refusal = Refusal(ErrorCode.INTUNE_NOTIFICATION_FAILED, "the server failed to notify Intune")
        if refusal is None:
            return outcome
        self._withdraw(certificate, refusal)
        return Outcome.failure(refusal)

    def _failed_after_validation(self, transaction_id: str, csr: CertificationRequest, exc: Exception) -> None:
        """The MDM validated the request and scepd then failed: it is told so."""
        if isinstance(exc, StoreUnavailable):
            refusal = Refusal(ErrorCode.STORE_UNAVAILABLE, exc.reason)
        else:
            refusal = Refusal(ErrorCode.INTERNAL_ERROR, "the server failed to process the request")
        self.gate.failed(transaction_id, csr.der, refusal)

    def _withdraw(self, certificate: x509.Certificate, refusal: Refusal) -> None:
        """Revoke a committed certificate that is not delivered, and re-sign its CRL: it stays
        on record, and listed as revoked should it ever be seen."""
        serial = format(certificate.serial_number, "x")
        fields = {"serial": serial, "code": refusal.code.value}
        try:
            with self.store.unit_of_work() as uow:
                uow.revoke(serial, "cessationOfOperation", self.clock.now())
        except StoreUnavailable as exc:
            # Still not delivered; the record stays valid until an administrator revokes it.
            log.error("certificate %s withheld (%s) but not revoked: %s; revoke it with 'scepd certs revoke'",
                      serial, refusal.reason, exc.reason, extra={"fields": fields})
            return
        log.warning("certificate %s withheld and revoked (cessationOfOperation): %s", serial, refusal.reason,
                    extra={"fields": fields})
        ca = next((a for a in self.authorities.all_cas if a.issued(certificate)), None)
        if ca is not None:
            try:
                self.issuance.crls.issue(ca)
            except StoreUnavailable as exc:
                log.warning("CRL not re-signed after withholding %s: %s", serial, exc.reason)

    def _stored(self, transaction_id: str, fingerprint: str) -> TransactionRecord | None:
        """The stored request this one resends, if it is one."""
        return next((r for r in self.store.find_requests(transaction_id) if r.request_sha256 == fingerprint), None)

    def _record(self, new: TransactionRecord, csr: CertificationRequest, renewed: CertificateRecord | None,
                details: dict) -> tuple[Outcome, Template | None]:
        """Judge and, when the request qualifies, issue (or hold for approval) in one unit of
        work. A refusal rolls it back: a refused request spends no one-time password and no
        challenge."""
        with self.store.unit_of_work() as uow:
            template = self._judge(new.transaction_id, csr, renewed, uow, details)
            if isinstance(template, Refusal):
                uow.rollback()
                return Outcome.failure(template), None
            if template.approval == "manual":
                uow.add_transaction(_with(new, template, TransactionState.PENDING))
                return Outcome.pending(), template
            cert = self.issuance.issue_in(uow, _with(new, template, TransactionState.ISSUED), csr, template)
            if isinstance(cert, Refusal):
                uow.rollback()
                return Outcome.failure(cert), None
            return Outcome.success(cert), template

    def _judge(self, transaction_id: str, csr: CertificationRequest, renewed: CertificateRecord | None,
               uow: UnitOfWork, details: dict) -> Template | Refusal:
        """The template to issue from, or why not."""
        named = None
        if renewed is None:
            # The challenge first: it may name the template (an MDM challenge can).
            verdict = self._verdict(transaction_id, csr, uow, details)
            if isinstance(verdict, Refusal):
                return verdict
            named = verdict.template
        template = self.choice.select(csr, named, details)
        if isinstance(template, Refusal) or renewed is None:
            return template
        return self._renewal_template(transaction_id, csr, renewed, template, uow, details)

    def _renewal_template(self, transaction_id: str, csr: CertificationRequest, renewed: CertificateRecord,
                          template: Template, uow: UnitOfWork, details: dict) -> Template | Refusal:
        """A renewal gets no more than the certificate it renews holds; whatever it asks for
        beyond that is the registration point's to allow, as for a first enrollment."""
        refusal = renewal_refusal(renewed, template, self.clock)
        if refusal:
            return refusal
        wider = widening_refusal(renewed, csr, template, details)
        if wider is None:
            return template
        if csr.challenge_password is None:
            return wider
        verdict = self._verdict(transaction_id, csr, uow, details)
        if isinstance(verdict, Refusal):
            return verdict
        return self.choice.select(csr, verdict.template, details) if verdict.template else template

    def _verdict(self, transaction_id: str, csr: CertificationRequest, uow: UnitOfWork, details: dict) -> ChallengeVerdict | Refusal:
        verdict = self.validator.verify(ChallengeRequest(transaction_id, csr.challenge_password, csr), uow)
        details["validator"] = verdict.validator
        if verdict.accepted:
            details[_VALIDATED] = True
        return verdict if verdict.accepted else verdict.refusal


def _with(record: TransactionRecord, template: Template, status: TransactionState) -> TransactionRecord:
    return dataclasses.replace(record, template=template.name, status=status)
