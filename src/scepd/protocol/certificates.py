"""Certificates as CMS names them: asn1crypto's view of one, and the identifiers
(issuerAndSerialNumber, subjectKeyIdentifier) that SignerInfos and RecipientInfos carry.
May import: asn1crypto and cryptography.
"""

from __future__ import annotations

import contextlib
import functools

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def to_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))


def to_cryptography(cert: asn1_x509.Certificate) -> x509.Certificate:
    return x509.load_der_x509_certificate(cert.dump())


@functools.lru_cache(maxsize=64)
def known_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    """asn1crypto's view of one of our own certificates (the CA and RA), parsed once: they
    are looked up in every message.

    The value is shared by the server's threads, and asn1crypto parses lazily, filling a
    list of children as it goes: a second thread reading the same part meanwhile can find
    the list half built. So what `names_certificate` reads is parsed here, before the value
    is shared; afterwards it is only read."""
    asn1 = to_asn1(cert)
    _ = asn1.serial_number, asn1.issuer.dump()
    # A part that cannot be read (an odd name string, a malformed extension) still fails
    # where it is read, inside the caller's `decoding`, as it did before this warm-up.
    with contextlib.suppress(Exception):
        _ = asn1.issuer == asn1.issuer  # parses what the normalising comparison reads
    with contextlib.suppress(Exception):
        _ = asn1.key_identifier
    return asn1


def names_certificate(cert: asn1_x509.Certificate, identifier) -> bool:
    """Does a SignerIdentifier or RecipientIdentifier name this certificate?"""
    if identifier.name == "issuer_and_serial_number":
        ias = identifier.chosen
        # The serial first: an integer comparison rules out almost every other certificate.
        # Then the issuer's encoding, which is almost always copied from the certificate;
        # only when the bytes differ, asn1crypto's (normalising, slow) comparison of names.
        if cert.serial_number != ias["serial_number"].native:
            return False
        issuer = ias["issuer"]
        return cert.issuer.dump() == issuer.dump() or cert.issuer == issuer
    if identifier.name == "r_key_id":  # a KeyAgreeRecipientInfo's RecipientKeyIdentifier
        return cert.key_identifier == identifier.chosen["subject_key_identifier"].native
    return cert.key_identifier == identifier.chosen.native


def issuer_and_serial(certificate: x509.Certificate, spec):
    """The issuerAndSerialNumber of `certificate` as the CHOICE `spec` (a SignerIdentifier,
    RecipientIdentifier or KeyAgreementRecipientIdentifier)."""
    asn1 = to_asn1(certificate)
    return spec(name="issuer_and_serial_number", value={"issuer": asn1.issuer, "serial_number": asn1.serial_number})
