"""Renewal: a request signed by a certificate we issued is authenticated by it, and gets no
more than it holds; what it asks for beyond that is the registration point's to allow."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.ca.templates import Template, widened_identity
from scepd.clock import Clock
from scepd.protocol.csr import CertificationRequest
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.service.authorities import Authorities
from scepd.store import CertificateRecord, Store
from scepd.store.states import CertificateState


def signer_record(store: Store, authorities: Authorities, signer: x509.Certificate, clock: Clock) -> CertificateRecord | Refusal | None:
    """The record of the certificate of ours that signed a request, checked for use; None
    when something else signed it (a self-signed key, another CA)."""
    if not authorities.issued(signer):
        return None
    record = store.find_certificate(format(signer.serial_number, "x"))
    if record is None or record.der != signer.public_bytes(Encoding.DER):
        return Refusal(ErrorCode.SIGNER_CERTIFICATE_UNKNOWN,
                       f"the request is signed by serial {signer.serial_number:x}, which this CA has no record of")
    if record.status == CertificateState.REVOKED:
        return Refusal(ErrorCode.SIGNER_CERTIFICATE_REVOKED,
                       f"the signing certificate {record.serial} was revoked ({record.revocation_reason})")
    if record.not_after <= clock.now():
        return Refusal(ErrorCode.SIGNER_CERTIFICATE_EXPIRED,
                       f"the signing certificate {record.serial} expired on {record.not_after:%Y-%m-%d}")
    return record


def renewal_refusal(old: CertificateRecord, template: Template, clock: Clock) -> Refusal | None:
    """Does `template` allow renewing `old` now?"""
    if not template.renewal:
        return Refusal(ErrorCode.RENEWAL_NOT_ALLOWED, f"template {template.name} does not allow renewal")
    if template.renewal_window_days:
        opens = old.not_after - dt.timedelta(days=template.renewal_window_days)
        if clock.now() < opens:
            return Refusal(ErrorCode.RENEWAL_TOO_EARLY,
                           f"certificate {old.serial} can be renewed from {opens:%Y-%m-%d} "
                           f"({template.renewal_window_days} days before it expires)")
    return None


def widening_refusal(old: CertificateRecord, csr: CertificationRequest, template: Template, details: dict) -> Refusal | None:
    """None when the renewal asks for no more than `old` holds. Otherwise what it asks for
    beyond that, as the refusal it gets when no challenge lets the registration point decide
    (the caller asks the registration point when there is one)."""
    old_cert = x509.load_der_x509_certificate(old.der)
    wider = widened_identity(old_cert, old.template, csr, template)
    if not wider:
        return None
    details["renewal_widens"] = "; ".join(wider)
    if wider == ["subject"]:
        return Refusal(ErrorCode.RENEWAL_SUBJECT_MISMATCH,
                       f"the request asks for '{csr.subject.rfc4514_string()}' but renews '{old_cert.subject.rfc4514_string()}'")
    return Refusal(ErrorCode.RENEWAL_WIDENS_IDENTITY,
                   f"the renewal of {old.serial} asks for more than it holds ({'; '.join(wider)}) and carries no challenge")
