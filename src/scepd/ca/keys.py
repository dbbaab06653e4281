"""Private keys on disk: generated, written 0600 (optionally passphrase-protected), loaded once."""

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


def generate_key(spec: str):
    """`spec` is rsa:BITS or ec:p256 / ec:p384."""
    kind, _, size = spec.lower().partition(":")
    if kind == "rsa":
        bits = int(size or 2048)
        if bits < 2048:
            raise KeySpecError(f"{spec}: RSA keys must have at least 2048 bits")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ec":
        curve = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}.get(size)
        if curve is None:
            raise KeySpecError(f"{spec}: EC curve must be p256, p384 or p521")
        return ec.generate_private_key(curve())
    raise KeySpecError(f"{spec}: expected rsa:BITS or ec:CURVE")


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


def load_key(path: Path, passphrase: bytes | None = None):
    return serialization.load_pem_private_key(path.read_bytes(), passphrase or None)


def save_certificate(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@dataclass(frozen=True)
class KeyPair:
    """A certificate with its private key, loaded once and kept in memory."""

    certificate: x509.Certificate
    key: object

    @classmethod
    def load(cls, cert_path: Path, key_path: Path, passphrase: bytes | None = None) -> "KeyPair":
        return cls(load_certificate(cert_path), load_key(key_path, passphrase))

    def key_matches_certificate(self) -> bool:
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return self.key.public_key().public_bytes(*fmt) == self.certificate.public_key().public_bytes(*fmt)
