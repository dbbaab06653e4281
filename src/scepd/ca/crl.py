"""Revocation and CRLs: revoke a certificate, sign CRLs, keep the current one fresh.

A CRL is signed by the CA that issued the certificates it lists, numbered in sequence and
stored; it is re-signed on every revocation and, lazily, once half of its lifetime has passed
(so a relying party fetching at nextUpdate always finds a newer one).

Issuance is serialised per CA across server processes (a locked unit of work): of many
fetches that find the CRL due at once, one signs and the others serve what it stored, and
two signers never pick the same number. CRLs are kept in the store, and revocation is a
state change there: this is the one module of ca/ that uses scepd.store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.ca.authority import CertificateAuthority
from scepd.ca.signing import sign_with
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol import signatures
from scepd.store import CrlRecord, IntegrityError, Store

REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}


@dataclass
class CrlPublisher:
    store: Store
    validity: dt.timedelta = dt.timedelta(days=7)
    hash_name: str = "sha256"
    clock: Clock = SYSTEM_CLOCK

    def issue(self, ca: CertificateAuthority, *, unless_fresh: bool = False) -> x509.CertificateRevocationList:
        """Sign and store a new CRL for `ca` listing its revoked, unexpired certificates; with
        `unless_fresh`, the stored one instead if another process signed it meanwhile."""
        try:
            return self._issue(ca, unless_fresh)
        except IntegrityError:
            # The number was taken by a writer that does not take the lock (a scepd from
            # before it, during a rolling upgrade): sign again with the next number.
            return self._issue(ca, unless_fresh)

    def _fresh(self, record: CrlRecord | None) -> bool:
        if record is None:
            return False
        half_life = (record.next_update - record.this_update) / 2
        return self.clock.now() < record.this_update + half_life

    def _issue(self, ca: CertificateAuthority, unless_fresh: bool) -> x509.CertificateRevocationList:
        with self.store.unit_of_work(lock=f"crl:{ca.key_id}") as uow:
            if unless_fresh:
                latest = uow.latest_crl(ca.key_id)
                if self._fresh(latest):
                    return x509.load_der_x509_crl(latest.der)
            now = self.clock.now()  # after the lock: thisUpdate grows with the number
            number = uow.next_crl_number(ca.key_id)
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(ca.certificate.subject)
                .last_update(now)
                .next_update(now + self.validity)
                .add_extension(x509.CRLNumber(number), critical=False)
                .add_extension(ca.authority_key_identifier, critical=False)
            )
            for record in uow.revoked_certificates(ca.key_id):
                entry = (
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(record.serial, 16))
                    .revocation_date(record.revoked_at)
                )
                reason = REASONS.get(record.revocation_reason or "unspecified")
                if reason and reason is not x509.ReasonFlags.unspecified:
                    entry = entry.add_extension(x509.CRLReason(reason), critical=False)
                builder = builder.add_revoked_certificate(entry.build())
            crl = sign_with(builder, ca.pair.key, signatures.hash_algorithm(self.hash_name))
            uow.add_crl(CrlRecord(ca.key_id, number, now, now + self.validity, crl.public_bytes(Encoding.DER)))
        return crl

    def current(self, ca: CertificateAuthority) -> x509.CertificateRevocationList:
        """The CRL to serve: the stored one while less than half its lifetime has passed."""
        latest = self.store.latest_crl(ca.key_id)
        if self._fresh(latest):
            return x509.load_der_x509_crl(latest.der)
        return self.issue(ca, unless_fresh=True)

    def revoke(self, ca: CertificateAuthority, serial: str, reason: str) -> bool:
        """Revoke one certificate of `ca` and publish a new CRL. False if it was not valid."""
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}; one of {', '.join(REASONS)}")
        with self.store.unit_of_work() as uow:
            done = uow.revoke(serial.lower(), reason)
        if done:
            self.issue(ca)
        return done
