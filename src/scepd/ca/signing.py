"""Signing what cryptography's builders build (certificates, CRLs, OCSP responses, CSRs) with
any of our keys, token-held ones included.

The builders sign only with OpenSSL keys. For a key in a PKCS#11 token, `sign_with` lets the
builder sign with a throwaway key of the same type (cached per process), which yields the
right algorithm identifiers, then swaps in the token's signature over the to-be-signed bytes
(asn1crypto does the re-encoding) and verifies the result with the token key's public key
before returning it.
"""

from __future__ import annotations

import datetime as dt
import threading

from asn1crypto import crl as asn1_crl
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from scepd.ca.token_keys import is_token_key

_THROWAWAY: dict[tuple, object] = {}
_STAND_INS: dict[int, x509.Certificate] = {}
_LOCK = threading.Lock()


def _throwaway(key):
    """A key of `key`'s type and size: only its algorithm identifiers are used."""
    if isinstance(key, rsa.RSAPrivateKey):
        shape = ("rsa", key.key_size)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        shape = ("ec", key.curve.name)
    else:
        raise TypeError(f"cannot sign with {type(key).__name__}")
    with _LOCK:
        if shape not in _THROWAWAY:
            _THROWAWAY[shape] = (rsa.generate_private_key(65537, key.key_size) if shape[0] == "rsa"
                                 else ec.generate_private_key(type(key.curve)()))
        return _THROWAWAY[shape]


def sign_with(builder, key, algorithm):
    """`builder.sign(key, algorithm)` for every key scepd holds: a Certificate, CRL, OCSP
    response or CSR builder. Raises KeyUnavailable when the token cannot sign now."""
    if not is_token_key(key):
        return builder.sign(key, algorithm)
    if isinstance(builder, ocsp.OCSPResponseBuilder):
        return _sign_ocsp(builder, key, algorithm)
    draft = builder.sign(_throwaway(key), algorithm)
    if isinstance(draft, x509.Certificate):
        return _resign_certificate(draft, key, algorithm)
    if isinstance(draft, x509.CertificateRevocationList):
        return _resign_crl(draft, key, algorithm)
    if isinstance(draft, x509.CertificateSigningRequest):
        return _resign_csr(draft, key, algorithm)
    raise TypeError(f"cannot re-sign a {type(draft).__name__}")


def _signature(key, tbs: bytes, algorithm) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(tbs, padding.PKCS1v15(), algorithm)
    return key.sign(tbs, ec.ECDSA(algorithm))


def _verified(key, tbs: bytes, signature: bytes, algorithm) -> None:
    """The token's signature checked before anything carries it: a token that signs with a
    key other than the one its certificate names must not go unnoticed."""
    public = key.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, tbs, padding.PKCS1v15(), algorithm)
        else:
            public.verify(signature, tbs, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise ValueError(f"the token's signature does not verify with {key.uri.display}'s public key") from None


def _signed_anew(parsed, tbs_field: str, signature_field: str, key, algorithm) -> bytes:
    """`parsed` (a certificate, CRL or CSR as asn1crypto reads it) with its to-be-signed part
    signed by `key`, the signature checked before it leaves: the DER."""
    tbs = parsed[tbs_field].dump()
    signature = _signature(key, tbs, algorithm)
    _verified(key, tbs, signature, algorithm)
    parsed[signature_field] = signature
    return parsed.dump()


def _resign_certificate(draft: x509.Certificate, key, algorithm) -> x509.Certificate:
    parsed = asn1_x509.Certificate.load(draft.public_bytes(Encoding.DER))
    return x509.load_der_x509_certificate(_signed_anew(parsed, "tbs_certificate", "signature_value", key, algorithm))


def _resign_crl(draft: x509.CertificateRevocationList, key, algorithm) -> x509.CertificateRevocationList:
    parsed = asn1_crl.CertificateList.load(draft.public_bytes(Encoding.DER))
    return x509.load_der_x509_crl(_signed_anew(parsed, "tbs_cert_list", "signature", key, algorithm))


def _resign_csr(draft: x509.CertificateSigningRequest, key, algorithm) -> x509.CertificateSigningRequest:
    parsed = asn1_csr.CertificationRequest.load(draft.public_bytes(Encoding.DER))
    # A CSR carries its signer's public key: the throwaway's is replaced by the token key's.
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    parsed["certification_request_info"]["subject_pk_info"] = asn1_keys.PublicKeyInfo.load(spki)
    return x509.load_der_x509_csr(_signed_anew(parsed, "certification_request_info", "signature", key, algorithm))


def _stand_in(key) -> x509.Certificate:
    """A certificate of the throwaway key: the OCSP builder insists that its responder's key
    is the signing key."""
    throwaway = _throwaway(key)
    with _LOCK:
        if id(throwaway) not in _STAND_INS:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scepd stand-in responder")])
            now = dt.datetime.now(dt.timezone.utc)
            _STAND_INS[id(throwaway)] = (
                x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(throwaway.public_key())
                .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                .sign(throwaway, hashes.SHA256()))
        return _STAND_INS[id(throwaway)]


def _sign_ocsp(builder: ocsp.OCSPResponseBuilder, key, algorithm) -> ocsp.OCSPResponse:
    """The builder's response signed by the stand-in, then its responderID set to the real
    responder and its signature to the token's. cryptography has no accessors for what a
    builder holds, hence its attributes."""
    responder, encoding = builder._responder_id
    stand_in = ocsp.OCSPResponseBuilder(builder._response, (_stand_in(key), encoding), builder._certs,
                                        builder._extensions)
    draft = stand_in.sign(_throwaway(key), algorithm)
    parsed = asn1_ocsp.OCSPResponse.load(draft.public_bytes(Encoding.DER))
    basic = parsed["response_bytes"]["response"].parsed
    real = asn1_x509.Certificate.load(responder.public_bytes(Encoding.DER))
    basic["tbs_response_data"]["responder_id"] = (
        asn1_ocsp.ResponderId({"by_key": real.public_key.sha1}) if encoding is ocsp.OCSPResponderEncoding.HASH
        else asn1_ocsp.ResponderId({"by_name": real.subject}))
    tbs = basic["tbs_response_data"].dump()
    signature = _signature(key, tbs, algorithm)
    _verified(key, tbs, signature, algorithm)
    basic["signature"] = signature
    parsed["response_bytes"]["response"] = asn1_ocsp.BasicOCSPResponse.load(basic.dump())
    return ocsp.load_der_ocsp_response(parsed.dump())
