"""Private keys: on disk (generated, written 0600, optionally passphrase-protected) or in a
PKCS#11 token (named by a pkcs11: URI, see ca/pkcs11.py), loaded once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PRIVATE_FILE_MODE = 0o600


class KeySpecError(ValueError):
    pass


def parse_key_spec(spec: str) -> tuple[str, int | str]:
    """("rsa", bits) or ("ec", "secp256r1" ...) for rsa:BITS or ec:p256 / ec:p384 / ec:p521."""
    kind, _, size = spec.lower().partition(":")
    if kind == "rsa":
        try:
            bits = int(size or 2048)
        except ValueError:
            raise KeySpecError(f"{spec}: expected rsa:BITS") from None
        if bits < 2048:
            raise KeySpecError(f"{spec}: RSA keys must have at least 2048 bits")
        return "rsa", bits
    if kind == "ec":
        curve = {"p256": "secp256r1", "p384": "secp384r1", "p521": "secp521r1"}.get(size)
        if curve is None:
            raise KeySpecError(f"{spec}: EC curve must be p256, p384 or p521")
        return "ec", curve
    raise KeySpecError(f"{spec}: expected rsa:BITS or ec:CURVE")


_CURVES = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1}


def generate_key(spec: str, token_uri: str | None = None, reuse: bool = False):
    """A new key: in memory (saved by save_key), or for a pkcs11: URI generated inside that
    token, non-extractable, as the object the URI names (`reuse`: the object there already
    is taken instead of refused)."""
    kind, size = parse_key_spec(spec)
    if token_uri is not None:
        from scepd.ca.token_keys import generate_token_key

        return generate_token_key(token_uri, kind, size, reuse=reuse)
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    return ec.generate_private_key(_CURVES[size]())


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file that is 0600 from the moment it exists (no window of wider access)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def save_key(key, path: Path, passphrase: bytes | None = None) -> None:
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    write_private(path, pem)


def is_key_uri(name) -> bool:
    """Does this [ca] key / [ra] key / ... value name a key in a PKCS#11 token?"""
    from scepd.ca.pkcs11 import is_pkcs11_uri

    return is_pkcs11_uri(str(name))


def load_key(path: Path | str, passphrase: bytes | None = None):
    """The key in a PEM file, or in a token for a pkcs11: URI (TokenError, Pkcs11UriError
    say why it cannot be opened)."""
    if is_key_uri(path):
        from scepd.ca.token_keys import open_token_key

        return open_token_key(str(path))
    return serialization.load_pem_private_key(Path(path).read_bytes(), passphrase or None)


def save_certificate(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@dataclass(frozen=True)
class KeyPair:
    """A certificate with its private key, loaded once and kept in memory; `key` is an
    OpenSSL key or a token-held one (ca/token_keys.py), which signs and decrypts alike."""

    certificate: x509.Certificate
    key: object

    @classmethod
    def load(cls, cert_path: Path, key_path: Path | str, passphrase: bytes | None = None) -> "KeyPair":
        return cls(load_certificate(cert_path), load_key(key_path, passphrase))

    def key_matches_certificate(self) -> bool:
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return self.key.public_key().public_bytes(*fmt) == self.certificate.public_key().public_bytes(*fmt)
