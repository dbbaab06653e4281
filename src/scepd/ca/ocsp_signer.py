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

A CA whose key is in a PKCS#11 token keeps its signer's key there too, never on disk: the
object `ocsp-<ca key id>` beside the CA's (same token, same PIN), made once, non-extractable,
and re-certified at each renewal; only the certificate is a file. A renewal that fails (the
token away) while the current signer is still valid keeps that signer, says so once, and is
tried again a minute later; without a valid signer the failure is `KeyUnavailable`, which the
responder answers with tryLater.
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
from scepd.ca.keys import (
    KeyPair,
    generate_key,
    load_certificate,
    load_key,
    save_certificate,
    save_key,
)
from scepd.ca.pkcs11 import TokenError
from scepd.ca.signing import sign_with
from scepd.ca.token_keys import is_token_key
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol import signatures
from scepd.protocol.errors import KeyUnavailable

log = logging.getLogger("scepd.ocsp")

SIGNER_VALIDITY = dt.timedelta(days=30)
# After a failed renewal, how long the still-valid signer is used before trying again.
RENEWAL_RETRY = dt.timedelta(minutes=1)
_CURVE_SPECS = {"secp256r1": "ec:p256", "secp384r1": "ec:p384", "secp521r1": "ec:p521"}


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


def token_signer_uri(ca: CertificateAuthority) -> str | None:
    """For a CA whose key is in a token: the URI of its signer's key object, beside it."""
    if not is_token_key(ca.pair.key):
        return None
    return str(ca.pair.key.uri.with_object(f"ocsp-{ca.key_id}"))


def _token_signer_key(ca: CertificateAuthority, uri: str):
    """The signer's key in the CA's token: the object there, else made now (RSA 2048 for an
    RSA CA, the CA's curve for an EC one). KeyUnavailable when the token cannot do it."""
    key = ca.pair.key
    spec = "rsa:2048" if isinstance(key, rsa.RSAPrivateKey) else _CURVE_SPECS.get(key.curve.name, "ec:p256")
    try:
        return generate_key(spec, uri, reuse=True)
    except TokenError as exc:
        raise KeyUnavailable(f"the OCSP signer's key {uri.split('?')[0]} cannot be made or opened: {exc.reason}") from None
    except Exception as exc:
        if not type(exc).__module__.startswith("pkcs11"):
            raise
        raise KeyUnavailable(f"the token failed making the OCSP signer's key ({type(exc).__name__})") from None


def _common_name(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else "scepd"


def issue_ocsp_signer(ca: CertificateAuthority, validity: dt.timedelta = SIGNER_VALIDITY, key=None) -> KeyPair:
    """A delegated OCSP signing pair issued by `ca`, never outliving it, for `key` (None: a new
    one, in the CA's token when the CA's key is in one)."""
    if key is None:
        uri = token_signer_uri(ca)
        key = _token_signer_key(ca, uri) if uri else _signer_key_like(ca.pair.key)
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
    try:
        cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    except x509.ExtensionNotFound:
        # Without it a relying party asks about the signer too, which this signer answers itself.
        return "it lacks the id-pkix-ocsp-nocheck extension"
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return "its keyUsage lacks digitalSignature"
    except x509.ExtensionNotFound:
        pass  # no keyUsage: every usage allowed (RFC 5280 4.2.1.3)
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
        self._retry_at: dict[str, dt.datetime] = {}  # per CA key id, after a failed renewal
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
        """The signer of `ca`'s responses now; KeyUnavailable when there is no valid one."""
        pair = self._pairs.get(ca.key_id)
        if self.due(pair, ca, checked=True):
            with self._lock:
                pair = self._pairs.get(ca.key_id)
                if self.due(pair, ca, checked=True):
                    pair = self._renewed(ca, pair)
        return Signer(pair, delegated=True)

    def _renewed(self, ca: CertificateAuthority, current: KeyPair | None) -> KeyPair:
        """A fresh pair for `ca`; or, when making one fails and `current` is valid still,
        `current` (said once, tried again after RENEWAL_RETRY)."""
        now = self.clock.now()
        usable = current is not None and now < current.certificate.not_valid_after_utc
        if usable and now < self._retry_at.get(ca.key_id, now):
            return current
        try:
            pair, _created = self.ensure(ca)
        except (KeyUnavailable, TokenError) as exc:
            reason = exc.reason
            if not usable:
                raise KeyUnavailable(f"no valid OCSP signer for CA {ca.key_id}: {reason}") from None
            if ca.key_id not in self._retry_at:
                log.warning("ocsp signer for CA %s not renewed (%s); signing with the current one, valid until %s",
                            ca.key_id, reason, f"{current.certificate.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
            self._retry_at[ca.key_id] = now + RENEWAL_RETRY
            return current
        self._retry_at.pop(ca.key_id, None)
        self._pairs[ca.key_id] = pair
        return pair

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
            in_token = token_signer_uri(ca) is not None
            # The token's key is kept and certified again; a file's key is made anew.
            pair = issue_ocsp_signer(ca, self.validity, pair.key if in_token and pair is not None else None)
            cert_path, key_path = self.paths(ca)
            writes = [(cert_path, lambda p: save_certificate(pair.certificate, p))]
            if in_token:
                key_path.unlink(missing_ok=True)  # one an earlier scepd wrote: its key is the token's now
            else:
                writes.insert(0, (key_path, lambda p: save_key(pair.key, p, self.passphrase)))
            for target, write in writes:
                temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                temporary.unlink(missing_ok=True)
                write(temporary)
                os.replace(temporary, target)
            log.warning("ocsp signer for CA %s created, valid until %s", ca.key_id,
                        f"{pair.certificate.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
            return pair, True

    def load(self, ca: CertificateAuthority) -> KeyPair | None:
        """The pair on disk for `ca` (the key in the CA's token when the CA's is there); None
        when it is missing or cannot be read."""
        cert_path, key_path = self.paths(ca)
        try:
            certificate = load_certificate(cert_path)
            uri = token_signer_uri(ca)
            return KeyPair(certificate, load_key(uri if uri else key_path, self.passphrase))
        except (OSError, ValueError, TypeError, TokenError, KeyUnavailable):
            return None


def signer_findings(signers: DelegatedSigners, cas: tuple[CertificateAuthority, ...], repair: bool) -> tuple[list[str], list[str]]:
    """What `scepd doctor` says of the delegated signers of `cas`: (problems, notes). With
    `repair`, a missing, unusable or due signer is created (as `scepd serve` does at start)."""
    problems, notes = [], []
    for ca in cas:
        if repair:
            try:
                pair, created = signers.ensure(ca)
            except (KeyUnavailable, TokenError) as exc:
                problems.append(f"the OCSP signer of CA {ca.key_id} cannot be made: {exc.reason}")
                continue
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
