"""Signing a certificate and recording it, with its transaction and its success notification,
in one unit of work; and the answer a stored request gives."""

from __future__ import annotations

import base64
import dataclasses
import logging

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.ca.crl import CrlPublisher
from scepd.ca.templates import Template
from scepd.clock import Clock
from scepd.protocol.csr import CertificationRequest
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.protocol.fingerprints import certificate_sha256, certificate_thumbprint
from scepd.service.authorities import Authorities
from scepd.service.outcome import Outcome
from scepd.store import (
    CertificateRecord,
    StoreUnavailable,
    TransactionRecord,
    UnitOfWork,
)
from scepd.store.states import CertificateState, NotificationKind, TransactionState

log = logging.getLogger("scepd.service")


class Issuance:
    def __init__(self, *, authorities: Authorities, crls: CrlPublisher, notify: dict[str, tuple[str, ...]],
                 clock: Clock) -> None:
        self.authorities = authorities
        self.crls = crls
        self.notify = notify  # notification kind value -> target URLs
        self.clock = clock

    def issue_in(self, uow: UnitOfWork, record: TransactionRecord, csr: CertificationRequest, template: Template) -> x509.Certificate | Refusal:
        """Sign and record a certificate for `record` inside the caller's unit of work: the
        certificate exists only if the record commits. A pending record is decided instead;
        a Refusal when it is no longer pending or the template's CA is gone."""
        ca = self.authorities.issuer_for(template)
        if ca is None:
            return Refusal(ErrorCode.TEMPLATE_MISSING, f"template {template.name} names CA {template.ca!r}, which is not configured")
        cert = ca.issue(csr, template)
        serial = format(cert.serial_number, "x")
        uow.add_certificate(CertificateRecord(
            serial=serial, issuer_key_id=ca.key_id, subject=cert.subject.rfc4514_string(), template=template.name,
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, sha256=certificate_sha256(cert),
            der=cert.public_bytes(Encoding.DER), transaction_id=record.transaction_id, renewal_of=record.renewal_of,
        ))
        if record.status == TransactionState.PENDING:
            if not uow.decide_pending(record.transaction_id, TransactionState.ISSUED, serial=serial):
                return Refusal(ErrorCode.REQUEST_NOT_PENDING, f"request {record.transaction_id} is no longer pending")
        else:
            uow.add_transaction(dataclasses.replace(record, certificate_serial=serial))
        if record.renewal_of and template.revoke_on_renewal:
            uow.revoke(record.renewal_of, "superseded")
        targets = self.notify.get(NotificationKind.SUCCESS.value, ())
        if not targets:  # nobody to tell: no row in the outbox (and no payload to build)
            return cert
        uow.add_notification(NotificationKind.SUCCESS, record.transaction_id, {
            "transactionId": record.transaction_id,
            # As stored: without the challengePassword, which webhooks have no use for.
            "certificateRequest": base64.b64encode(record.csr_der).decode("ascii"),
            "certificateThumbprint": certificate_thumbprint(cert),
            "certificateSerialNumber": serial,
            "certificateExpirationDateUtc": cert.not_valid_after_utc.isoformat(),
            "issuingCertificateAuthority": ca.certificate.subject.rfc4514_string(),
            "subject": cert.subject.rfc4514_string(),
            "template": template.name,
            "callerInfo": "scepd",
        }, targets)
        return cert

    def publish_crl_after_renewal(self, renewed: CertificateRecord) -> None:
        """Re-sign the CRL of a certificate its renewal superseded. The certificates are
        recorded already: a store that fails now costs the fresh CRL, not the client's
        certificate (it is re-signed at the next revocation, or once half its lifetime is past)."""
        ca = self.authorities.ca_for_key_id(renewed.issuer_key_id)
        if ca is None:
            return
        try:
            self.crls.issue(ca)
        except StoreUnavailable as exc:
            log.warning("CRL not re-signed after renewing %s: %s", renewed.serial, exc.reason)

    def status_of(self, record: TransactionRecord) -> Outcome:
        """The answer a stored request gives to its resend or poll. A certificate that has
        been revoked or has expired since is never handed out as a SUCCESS."""
        if record.status == TransactionState.ISSUED:
            if record.certificate_status == CertificateState.REVOKED:
                return Outcome.refuse(ErrorCode.ISSUED_CERTIFICATE_REVOKED,
                                      f"the certificate {record.certificate_serial} issued for this request was revoked")
            if record.certificate_not_after is not None and record.certificate_not_after <= self.clock.now():
                return Outcome.refuse(ErrorCode.ISSUED_CERTIFICATE_EXPIRED,
                                      f"the certificate {record.certificate_serial} issued for this request expired on "
                                      f"{record.certificate_not_after:%Y-%m-%d}")
            return Outcome.success(x509.load_der_x509_certificate(record.certificate_der))
        if record.status == TransactionState.DENIED:
            return Outcome.refuse(ErrorCode.REQUEST_DENIED, record.reason or "denied by an administrator")
        return Outcome.pending()
