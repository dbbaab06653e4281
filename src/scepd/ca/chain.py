"""A CA under someone else's root: its certification path, checked link by link.

An issuing CA that is not its own root comes with the certificates above it (the chain file,
in any order, possibly holding the paths of several of our CAs, e.g. the next one's during a
rollover). `path_above` finds the path of one certificate in that pool, up to a self-signed
root; `check_issuing_ca` holds a certificate offered as our CA (`scepd ca install`,
`scepd init --import-ca`) to what issuing needs. Each problem is a `ChainError` whose `name`
says which rule it broke (what the CLI prints and the tests match).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# No real path is longer; a pool whose issuers loop must not loop us.
MAX_PATH_LENGTH = 8

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class ChainError(ValueError):
    """`name`: the rule broken (key_mismatch, not_a_ca, no_key_cert_sign, no_crl_sign, expired,
    not_yet_valid, issuer_missing, bad_signature, path_too_long, path_length_exceeded, not_pem);
    `fix`: what mends it."""

    def __init__(self, name: str, reason: str, fix: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        self.fix = fix


def load_pem_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ChainError("not_pem", f"{what} holds no PEM certificate ({exc})", f"give {what} as PEM (openssl x509 -inform der -in FILE -out FILE.pem)") from None
    return certificates


def describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # InvalidSignature, ValueError, TypeError: not its own issuer
        return False
    return True


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Did `issuer` sign `cert` (names chain, signature verifies)?"""
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError (names differ), TypeError (key type)
        return False
    return True


def same_key(cert: x509.Certificate, public_key) -> bool:
    return cert.public_key().public_bytes(*_SPKI) == public_key.public_bytes(*_SPKI)


def path_above(cert: x509.Certificate, pool: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """The certificates above `cert`, nearest first, ending at a self-signed root (empty when
    `cert` is a root itself). ChainError when an issuer is missing or a signature fails."""
    pool = list(dict.fromkeys(pool))
    path: list[x509.Certificate] = []
    current = cert
    while not is_self_signed(current):
        if len(path) >= MAX_PATH_LENGTH:
            raise ChainError("path_too_long", f"no self-signed root within {MAX_PATH_LENGTH} certificates above {describe(cert)}",
                             "give the chain up to the root, without loops")
        named = [c for c in pool if c.subject == current.issuer and c != current]
        issuer = next((c for c in named if signed_by(current, c)), None)
        if issuer is None:
            if named:
                raise ChainError("bad_signature", f"{describe(named[0])} in the chain did not sign {describe(current)}",
                                 "give the chain of the CA that signed it")
            raise ChainError("issuer_missing", f"the chain does not hold {current.issuer.rfc4514_string()}, "
                             f"the issuer of {describe(current)}, so it does not lead to a self-signed root",
                             "give --chain with every CA certificate up to the root (PEM, concatenated)")
        path.append(issuer)
        current = issuer
    return path


def _path_length(cert: x509.Certificate) -> int | None:
    """basicConstraints pathLenConstraint: how many CAs may stand below `cert` (None: any)."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None


def _ca_problem(cert: x509.Certificate, now: dt.datetime, role: str, issuing: bool = False) -> ChainError | None:
    """What keeps `cert` from being a CA in the path now; `issuing`: it is our own CA, which
    also signs CRLs."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return ChainError("not_a_ca", f"{role} {describe(cert)} is not a CA certificate (basicConstraints CA:TRUE missing)",
                          "have it signed with basicConstraints = critical, CA:TRUE (docs/pki.md)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            return ChainError("no_key_cert_sign", f"{role} {describe(cert)} may not sign certificates (keyUsage lacks keyCertSign)",
                              "have it signed with keyUsage = critical, keyCertSign, cRLSign (docs/pki.md)")
        if issuing and not usage.crl_sign:
            # Every certificate we issue names our CRL, which a relying party rejects when
            # its signer may not sign CRLs (openssl: "key usage does not include CRL signing").
            return ChainError("no_crl_sign", f"{role} {describe(cert)} may not sign CRLs (keyUsage lacks cRLSign)",
                              "have it signed with keyUsage = critical, keyCertSign, cRLSign (docs/pki.md)")
    except x509.ExtensionNotFound:
        pass  # no keyUsage: every usage allowed (RFC 5280 4.2.1.3)
    if cert.not_valid_after_utc <= now:
        return ChainError("expired", f"{role} {describe(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                          "have the CA sign a new certificate")
    if cert.not_valid_before_utc > now:
        return ChainError("not_yet_valid", f"{role} {describe(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z",
                          "check the clocks of this host and of the CA that signed it")
    return None


def check_path(cert: x509.Certificate, pool: Sequence[x509.Certificate], now: dt.datetime) -> list[x509.Certificate]:
    """`cert` and every certificate above it are CAs, valid `now`, each signed by the next,
    ending at a self-signed root. Returns the path above `cert`."""
    path = path_above(cert, pool)
    for role, c in (("the CA", cert), *(("the chain's", p) for p in path)):
        problem = _ca_problem(c, now, role, issuing=c is cert)
        if problem:
            raise problem
    _check_path_lengths([cert, *path])
    return path


def _check_path_lengths(path: list[x509.Certificate]) -> None:
    """RFC 5280 4.2.1.9 over `path` (our CA first, the root last): no CA has more CAs below
    it than its pathLenConstraint allows, self-issued ones not counted. Our CA counts as one
    below its issuer, since what it issues are end entities under it."""
    below = 0
    for index, cert in enumerate(path):
        limit = _path_length(cert)
        if index and limit is not None and below > limit:
            raise ChainError("path_length_exceeded",
                             f"{describe(cert)} allows {limit} CA certificate(s) below it (pathlen:{limit}), "
                             f"and {below} stand between it and the certificates {describe(path[0])} issues",
                             "have a CA whose pathLenConstraint allows it sign ours (an intermediate with pathlen:0 "
                             "may only sign end entities), or sign it directly with that CA's issuer")
        if cert.issuer != cert.subject:
            below += 1


def check_issuing_ca(cert: x509.Certificate, public_key, pool: Sequence[x509.Certificate],
                     now: dt.datetime, key_source: str = "the CSR's") -> list[x509.Certificate]:
    """A certificate offered as our issuing CA: it carries `public_key` (the key we hold:
    `key_source`), and passes `check_path`. Returns the path above it."""
    if not same_key(cert, public_key):
        raise ChainError("key_mismatch", f"{describe(cert)} carries another public key than {key_source} key",
                         "have the CA sign the CSR scepd wrote" if "CSR" in key_source else "give the key of that certificate")
    return check_path(cert, pool, now)
