"""What an administrator decides: approving or denying a pending request, revoking a
certificate (and, on request, what was renewed from it). Every expected failure is a
`Refusal` with its code; the CLI and the console show it."""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509

from scepd.ca.crl import REASONS as REVOCATION_REASONS
from scepd.ca.crl import CrlPublisher
from scepd.ca.templates import Template
from scepd.challenge.otp import new_one_time_password
from scepd.clock import Clock
from scepd.protocol.csr import parse_csr
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.service.authorities import Authorities
from scepd.service.issuance import Issuance
from scepd.store import CertificateRecord, Store, TransactionRecord
from scepd.store.states import CertificateState, TransactionState


class Administration:
    def __init__(self, *, store: Store, templates: dict[str, Template], authorities: Authorities,
                 issuance: Issuance, crls: CrlPublisher, clock: Clock) -> None:
        self.store = store
        self.templates = templates
        self.authorities = authorities
        self.issuance = issuance
        self.crls = crls
        self.clock = clock

    def new_one_time_password(self, validity: dt.timedelta) -> tuple[str, dt.datetime]:
        """A fresh single-use challenge password (`scepd otp new`, NDES's mscep_admin page);
        only its digest is stored."""
        return new_one_time_password(self.store, validity)

    def approve(self, transaction_id: str) -> x509.Certificate | Refusal:
        """Issue the certificate of a pending request (`scepd requests approve`)."""
        record = self._pending(transaction_id)
        if isinstance(record, Refusal):
            return record
        template = self.templates.get(record.template)
        if template is None:
            return Refusal(ErrorCode.TEMPLATE_MISSING, f"the request's template {record.template!r} no longer exists")
        csr = parse_csr(record.csr_der, verified=True)  # checked on arrival, stored without its challenge
        with self.store.unit_of_work() as uow:
            cert = self.issuance.issue_in(uow, record, csr, template)
            if isinstance(cert, Refusal):
                uow.rollback()
                return cert
        if record.renewal_of and template.revoke_on_renewal:
            old = self.store.find_certificate(record.renewal_of)
            if old:
                self.issuance.publish_crl_after_renewal(old)
        return cert

    def deny(self, transaction_id: str, reason: str) -> Refusal | None:
        refusal = self._pending(transaction_id)
        if isinstance(refusal, Refusal):
            return refusal
        with self.store.unit_of_work() as uow:
            if not uow.decide_pending(transaction_id, TransactionState.DENIED, reason=reason):
                return Refusal(ErrorCode.REQUEST_NOT_PENDING, f"request {transaction_id} is no longer pending")
        return None

    def _pending(self, transaction_id: str) -> TransactionRecord | Refusal:
        record = self.store.find_transaction(transaction_id)
        if record is None:
            return Refusal(ErrorCode.TRANSACTION_UNKNOWN, f"no request with transaction ID {transaction_id}")
        if record.status != TransactionState.PENDING:
            return Refusal(ErrorCode.REQUEST_NOT_PENDING, f"request {transaction_id} is {record.status}, not pending")
        return record

    def revoke(self, serial: str, reason: str, with_renewals: bool = False) -> tuple[CertificateRecord, ...] | Refusal:
        """Revoke a certificate and, `with_renewals`, every certificate renewed from it and from
        those (`scepd certs revoke`), in one database transaction; then sign the CRL of each CA
        concerned once. Returns what was revoked, as now recorded: the certificate, then its
        renewals oldest first, leaving out those revoked before (a certificate superseded by its
        renewal is revoked already, its renewals are not)."""
        if reason not in REVOCATION_REASONS:
            return Refusal(ErrorCode.REVOCATION_REASON_UNKNOWN, f"unknown reason {reason!r}; one of {', '.join(REVOCATION_REASONS)}")
        record = self.store.find_certificate(serial)
        if record is None:
            return Refusal(ErrorCode.CERTIFICATE_UNKNOWN, f"no certificate with serial {serial}")
        chain = [record, *(self.store.renewals_of(record.serial) if with_renewals else ())]
        valid = [r for r in chain if r.status == CertificateState.VALID]
        issuers = {r.issuer_key_id: self.authorities.ca_for_key_id(r.issuer_key_id) for r in valid}
        gone = sorted(key_id for key_id, ca in issuers.items() if ca is None)
        if gone:
            # Checked before anything is revoked: a revocation no CRL can list must not happen.
            return Refusal(ErrorCode.CA_NOT_CONFIGURED, f"the issuer {gone[0]} is no longer configured; its CRL cannot be signed")
        at = self.clock.now()
        with self.store.unit_of_work() as uow:
            # uow.revoke is conditional: one revoked meanwhile (another administrator) is skipped.
            revoked = tuple(dataclasses.replace(r, status=CertificateState.REVOKED, revoked_at=at, revocation_reason=reason)
                            for r in valid if uow.revoke(r.serial, reason, at))
        if not revoked:
            return Refusal(ErrorCode.CERTIFICATE_ALREADY_REVOKED,
                           f"certificate {serial} is already revoked" + (", and so are its renewals" if len(chain) > 1 else ""))
        for key_id in dict.fromkeys(r.issuer_key_id for r in revoked):
            self.crls.issue(issuers[key_id])
        return revoked
