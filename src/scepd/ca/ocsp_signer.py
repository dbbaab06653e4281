"""Who signs OCSP responses: a delegated OCSP signing certificate per CA (RFC 6960 4.2.2.2),
or the CA itself.

A delegated signer is an EKU id-kp-OCSPSigning certificate with id-pkix-ocsp-nocheck, issued
by the CA it answers for, short-lived (30 days by default), so the CA key signs once a month
instead of once per response and a relying party need not ask about the signer's own status.
scepd creates it and renews it itself: the pair lives in `<directory>/<ca key id>.pem` and
`.key`, re-created when missing, unusable or within a third of its lifetime of its end. Every
server process sharing the instance directory reads and writes these files under one file
lock, so two workers renewing at once end with one pair, not a key of one and a
certificate of the other. Where the directory cannot be written, the pair is kept in memory
(each process then signs with its own) and `problem` says why.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scepd.ca.authority import BACKDATE, CertificateAuthority
from scepd.ca.signing import sign_with
from scepd.ca.keys import (
    KeyPair,
    load_certificate,
    load_key,
    save_certificate,
    save_key,
)
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol import signatures

log = logging.getLogger("scepd.ocsp")

SIGNER_VALIDITY = dt.timedelta(days=30)


def signing_hash(key):
    """The digest a key signs with: none for EdDSA (it has its own), SHA-256 otherwise."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return signatures.hash_algorithm("sha256")


def _signer_key_like(ca_key):
    """A fresh key of the CA's kind (the relying party verifies that kind already): EC on the
    CA's curve, RSA 2048 for an RSA CA (a month-long key needs no more), else P-256."""
    if isinstance(ca_key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(ca_key.curve)
    if isinstance(ca_key, rsa.RSAPrivateKey):
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1())


def _common_name(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else "scepd"


def issue_ocsp_signer(ca: CertificateAuthority, validity: dt.timedelta = SIGNER_VALIDITY) -> KeyPair:
    """A new delegated OCSP signing pair issued by `ca`, never outliving it."""
    key = _signer_key_like(ca.pair.key)
    now = ca.clock.now()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{_common_name(ca.certificate.subject)} OCSP signer")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        # RFC 6960 4.2.2.2.1: relying parties need not ask about the signer itself.
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
    )
    return KeyPair(sign_with(builder, ca.pair.key, signing_hash(ca.pair.key)), key)


def signer_problem(pair: KeyPair, ca: CertificateAuthority, now: dt.datetime) -> str | None:
    """Why `pair` cannot sign `ca`'s OCSP responses now; None when it can."""
    cert = pair.certificate
    if not ca.issued(cert):
        return "it was not issued by this CA"
    if not pair.key_matches_certificate():
        return "its key does not belong to its certificate"
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = []
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        return "it lacks the OCSPSigning extended key usage"
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return f"it is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
    return None


@dataclass(frozen=True)
class Signer:
    """What signs one CA's responses: `pair`, and `delegated` when it is not the CA's own
    (the response then carries its certificate)."""

    pair: KeyPair
    delegated: bool

    @property
    def not_after(self) -> dt.datetime:
        return self.pair.certificate.not_valid_after_utc


class CaSigns:
    """[ocsp] signer = "ca": every response signed by the CA's own key."""

    problem: str | None = None

    def signer_for(self, ca: CertificateAuthority) -> Signer:
        return Signer(ca.pair, delegated=False)


class DelegatedSigners:
    """[ocsp] signer = "delegated": one delegated signer per CA, from `directory` (None: in
    memory only, as tests and the benchmark use it), renewed when a third of `validity`
    remains."""

    def __init__(self, directory: Path | None, passphrase: bytes | None = None,
                 validity: dt.timedelta = SIGNER_VALIDITY, clock: Clock = SYSTEM_CLOCK) -> None:
        self.directory = directory
        self.passphrase = passphrase
        self.validity = validity
        self.clock = clock
        self.problem: str | None = None  # why the files could not be used, if they could not
        self._pairs: dict[str, KeyPair] = {}
        self._lock = threading.Lock()

    def paths(self, ca: CertificateAuthority) -> tuple[Path, Path]:
        assert self.directory is not None
        return self.directory / f"{ca.key_id}.pem", self.directory / f"{ca.key_id}.key"

    def due(self, pair: KeyPair | None, ca: CertificateAuthority, checked: bool = False) -> bool:
        """Whether `pair` must be replaced: missing, unusable (unless `checked` already, as the
        pairs held in memory are: the signature check costs a fifth of a response) or near
        its end."""
        if pair is None or (not checked and signer_problem(pair, ca, self.clock.now()) is not None):
            return True
        end = pair.certificate.not_valid_after_utc
        # Clipped at the CA's own end, a pair cannot be followed by a longer one: keep it.
        return end < ca.certificate.not_valid_after_utc and end - self.clock.now() < self.validity / 3

    def signer_for(self, ca: CertificateAuthority) -> Signer:
        pair = self._pairs.get(ca.key_id)
        if self.due(pair, ca, checked=True):
            with self._lock:
                pair = self._pairs.get(ca.key_id)
                if self.due(pair, ca, checked=True):
                    pair, _created = self.ensure(ca)
                    self._pairs[ca.key_id] = pair
        return Signer(pair, delegated=True)

    def ensure(self, ca: CertificateAuthority) -> tuple[KeyPair, bool]:
        """The usable pair for `ca` from the directory, created (and written) when there is
        none or it is due; True when it was created."""
        if self.directory is None:
            return issue_ocsp_signer(ca, self.validity), True
        try:
            return self._ensure_file(ca)
        except OSError as exc:
            self.problem = f"{self.directory} cannot hold the OCSP signer ({exc.strerror}); signing with one kept in memory"
            log.warning("ocsp signer: %s", self.problem)
            return issue_ocsp_signer(ca, self.validity), True

    def _ensure_file(self, ca: CertificateAuthority) -> tuple[KeyPair, bool]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released as the file closes
            pair = self.load(ca)
            if not self.due(pair, ca):
                return pair, False
            pair = issue_ocsp_signer(ca, self.validity)
            cert_path, key_path = self.paths(ca)
            for target, write in ((key_path, lambda p: save_key(pair.key, p, self.passphrase)),
                                  (cert_path, lambda p: save_certificate(pair.certificate, p))):
                temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                temporary.unlink(missing_ok=True)
                write(temporary)
                os.replace(temporary, target)
            log.warning("ocsp signer for CA %s created, valid until %s", ca.key_id,
                        f"{pair.certificate.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
            return pair, True

    def load(self, ca: CertificateAuthority) -> KeyPair | None:
        """The pair on disk for `ca`; None when it is missing or cannot be read."""
        cert_path, key_path = self.paths(ca)
        try:
            return KeyPair(load_certificate(cert_path), load_key(key_path, self.passphrase))
        except (OSError, ValueError, TypeError):
            return None


def signer_findings(signers: DelegatedSigners, cas: tuple[CertificateAuthority, ...], repair: bool) -> tuple[list[str], list[str]]:
    """What `scepd doctor` says of the delegated signers of `cas`: (problems, notes). With
    `repair`, a missing, unusable or due signer is created (as `scepd serve` does at start)."""
    problems, notes = [], []
    for ca in cas:
        if repair:
            pair, created = signers.ensure(ca)
            if created:
                notes.append(f"created the OCSP signer of CA {ca.key_id}")
        else:
            pair = signers.load(ca)
            reason = "is missing or unreadable" if pair is None else signer_problem(pair, ca, signers.clock.now())
            if reason is not None:
                problems.append(f"the OCSP signer of CA {ca.key_id} {reason}")
                continue
            if signers.due(pair, ca, checked=True):
                problems.append(f"the OCSP signer of CA {ca.key_id} ends {pair.certificate.not_valid_after_utc:%Y-%m-%d}")
                continue
        notes.append(f"CA {ca.key_id}: signer valid until {pair.certificate.not_valid_after_utc:%Y-%m-%d}")
    if signers.problem:
        problems.append(signers.problem)
    return problems, notes
