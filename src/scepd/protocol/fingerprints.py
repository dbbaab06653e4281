"""Every fingerprint scepd computes or shows, of a certificate or of a public key.

One digest each, in the form its reader expects: the store's and the API's lower-case hex,
an administrator's colon-separated upper-case hex, Apple's raw SHA-1 `CAFingerprint`,
Intune's upper-case hex SHA-1 `certificateThumbprint`, JOSE's base64url `x5t#S256`.
"""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def certificate_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex (how the store and the APIs name it)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def certificate_sha256_display(cert: x509.Certificate) -> str:
    """The same SHA-256, as `openssl x509 -fingerprint` and browsers show it: AB:CD:..."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def certificate_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the DER certificate, raw: what Apple's SCEP payload compares GetCACert with."""
    return cert.fingerprint(hashes.SHA1())  # noqa: S303 (an identifier, not a signature)


def certificate_thumbprint(cert: x509.Certificate) -> str:
    """The Windows certificate thumbprint: SHA-1, upper-case hex (Intune's notifications)."""
    return certificate_sha1(cert).hex().upper()


def jose_thumbprint(cert: x509.Certificate) -> str:
    """The JOSE `x5t#S256` header value: SHA-256 of the DER certificate, base64url, unpadded."""
    return base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).rstrip(b"=").decode("ascii")


def public_key_sha256(public_key) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, lower-case hex: names a key across the
    certificates and requests that carry it."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    return digest.finalize().hex()
