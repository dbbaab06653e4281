"""MDM-issued challenges: a signed JWT of what the device may ask for, encrypted to the
registration point (JWS nested in a compact JWE, with joserfc).

The device carries the challenge as its challengePassword but can neither read nor alter it.
The registration point verifies it in named phases, each logged, and every failure carries
Intune's error name, so admins can search for it (docs/challenges.md has the format).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe, jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from scepd import peerjson
from scepd.challenge.base import ChallengeRequest, ChallengeVerdict
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol.csr import CertificationRequest
from scepd.protocol.errors import ErrorCode
from scepd.protocol.fingerprints import jose_thumbprint
from scepd.protocol.names import canonical_san, eku_oid, key_usage_names, san_text
from scepd.store import UnitOfWork

log = logging.getLogger("scepd.challenge")

DEVICE_ID_URI_PREFIX = "IntuneDeviceId://"
# The JWS header names its signer by the SHA-256 thumbprint of the signing certificate.
THUMBPRINT = "x5t#S256"
# The largest JOSE header or claims set read. A challenge arrives without credentials, as a
# CSR's challengePassword; a real header is a few hundred bytes, real claims a few KiB.
MAX_JOSE_JSON_BYTES = 65536
# What joserfc lets escape, besides its JoseError, for header values of the wrong type (a
# "crit" that is a number, an "epk" member that is a list): a malformed challenge, not a bug.
_JOSE_FAULTS = (JoseError, ValueError, TypeError, KeyError, AttributeError)


def _jwk(key):
    kind = RSAKey if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) else ECKey
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        return kind.import_key(key)
    # The private key signs or agrees; the JWK's members are the public key's, so that a key
    # held by a PKCS#11 token is never asked for its private numbers (it cannot give them).
    return kind(key, kind.import_key(key.public_key()).dict_value)


def _signing_alg(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]


def _encryption_alg(public_key) -> str:
    return "RSA-OAEP-256" if isinstance(public_key, rsa.RSAPublicKey) else "ECDH-ES+A128KW"


@dataclass(frozen=True)
class ExpectedRequest:
    """The `req` claim: what the CSR must ask for. Empty fields are not checked."""

    subject: str | None = None
    sans: tuple[str, ...] = ()
    key_usage: tuple[str, ...] = ()
    eku: tuple[str, ...] = ()
    key_type: str | None = None  # rsa | ec
    min_key_size: int | None = None
    template: str | None = None
    device_id: str | None = None
    user_id: str | None = None

    def __post_init__(self) -> None:
        for san in self.sans:
            canonical_san(san)  # a SAN no CSR could carry would fail every device: refused now

    def as_claim(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items() if v not in (None, ())}

    @classmethod
    def from_claim(cls, value: dict) -> "ExpectedRequest":
        if not isinstance(value, dict):
            raise ValueError("req must be an object")
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"req has unknown member(s) {sorted(unknown)}")
        fields = dict(value)
        for name in ("sans", "key_usage", "eku"):
            if name in fields:
                if not isinstance(fields[name], list) or not all(isinstance(v, str) for v in fields[name]):
                    raise ValueError(f"req.{name} must be a list of strings")
                fields[name] = tuple(fields[name])
        for name in ("subject", "key_type", "template", "device_id", "user_id"):
            if name in fields and not isinstance(fields[name], str):
                raise ValueError(f"req.{name} must be a string")
        if "min_key_size" in fields and not isinstance(fields["min_key_size"], int):
            raise ValueError("req.min_key_size must be an integer")
        return cls(**fields)


def issue_challenge(
    *,
    signing_certificate: x509.Certificate,
    signing_key,
    encryption_certificate: x509.Certificate,
    expected: ExpectedRequest,
    issuer: str,
    audience: str,
    lifetime: dt.timedelta,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[str, dict]:
    """A challenge for one enrollment: (compact JWE, its claims)."""
    issued = int(clock.now().timestamp())
    claims = {
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + int(lifetime.total_seconds()),
        "jti": uuid.uuid4().hex,
        "req": expected.as_claim(),
    }
    header = {"alg": _signing_alg(signing_key), "typ": "JWT", THUMBPRINT: jose_thumbprint(signing_certificate)}
    signed = jws.serialize_compact(header, json.dumps(claims, separators=(",", ":")), _jwk(signing_key))
    public = encryption_certificate.public_key()
    protected = {
        "alg": _encryption_alg(public),
        "enc": "A128GCM",
        "cty": "JWT",
        THUMBPRINT: jose_thumbprint(encryption_certificate),
    }
    return jwe.encrypt_compact(protected, signed.encode("ascii"), _jwk(public)), claims


def looks_like_challenge(password: str) -> bool:
    """A compact JWE has five base64url parts; no static or one-time password does."""
    return password.count(".") == 4


@dataclass
class MdmChallengeValidator:
    """Verifies MDM challenges in phases: decode, decrypt, signature, time, replay, compare."""

    encryption: tuple[x509.Certificate, object] | None
    trusted_signers: tuple[x509.Certificate, ...]
    audience: str
    clock_skew: dt.timedelta = dt.timedelta(minutes=5)
    max_lifetime: dt.timedelta = dt.timedelta(minutes=60)
    clock: Clock = SYSTEM_CLOCK
    name: str = "mdm"

    def readiness(self) -> tuple[tuple[bool, str], ...]:
        if self.encryption is None:
            return ((False, "MDM challenges need the registration point's encryption pair, which is missing"),)
        if not self.trusted_signers:
            return ((False, "MDM challenges need a trusted signing certificate, and none loads"),)
        return ((True, f"MDM challenges from {len(self.trusted_signers)} trusted signer(s)"),)

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        password = request.password or ""
        if not looks_like_challenge(password):
            return ChallengeVerdict.refuse(self.name, ErrorCode.CHALLENGE_PASSWORD_INCORRECT, "the challenge password is wrong")
        # Each phase returns its result or a refusal (a ChallengeVerdict); the first refusal ends it.
        phases = _Phases(request.transaction_id)
        header = phases.run("decode", self._decode, password)
        if isinstance(header, ChallengeVerdict):
            return header
        inner = phases.run("decrypt", self._decrypt, password, header)
        if isinstance(inner, ChallengeVerdict):
            return inner
        signed = phases.run("signature", self._signed_claims, inner)
        if isinstance(signed, ChallengeVerdict):
            return signed
        claims, expected = signed
        refused = phases.run("time", self._check_time, claims["iat"], claims["exp"])
        if isinstance(refused, ChallengeVerdict):
            return refused
        refused = phases.run("compare", self._compare, expected, request.csr)
        if isinstance(refused, ChallengeVerdict):
            return refused
        # Last, so that a challenge is only spent on a request that qualifies.
        refused = phases.run("replay", self._spend, claims, request.transaction_id, uow)
        if isinstance(refused, ChallengeVerdict):
            return refused
        return ChallengeVerdict(self.name, template=expected.template, claims=claims)

    def _refuse(self, code: ErrorCode, reason: str) -> ChallengeVerdict:
        return ChallengeVerdict.refuse(self.name, code, reason)

    def _decode(self, password: str) -> dict | ChallengeVerdict:
        try:
            header = _jose_json(_b64decode(password.split(".", 1)[0]))
            if not isinstance(header, dict) or "alg" not in header or "enc" not in header:
                raise ValueError("the JWE header lacks alg or enc")
        except ValueError as exc:
            return self._refuse(ErrorCode.CHALLENGE_DECODING_ERROR, f"the challenge is not a compact JWE: {exc}")
        return header

    def _decrypt(self, password: str, header: dict) -> str | ChallengeVerdict:
        if self.encryption is None:
            return self._refuse(
                ErrorCode.REGISTRATION_POINT_KEY_MISSING,
                "the registration point has no encryption key; run 'scepd doctor --fix' or restart 'scepd serve'",
            )
        cert, key = self.encryption
        sent_to = header.get(THUMBPRINT)
        if sent_to is not None and sent_to != jose_thumbprint(cert):
            return self._refuse(
                ErrorCode.CHALLENGE_DECRYPTION_ERROR,
                f"the challenge is encrypted to certificate {sent_to}, not to this registration point's "
                f"{jose_thumbprint(cert)} (was the encryption pair re-created? issue a new challenge)",
            )
        try:
            return jwe.decrypt_compact(password, _jwk(key)).plaintext.decode("ascii")
        except _JOSE_FAULTS as exc:
            return self._refuse(ErrorCode.CHALLENGE_DECRYPTION_ERROR, f"the challenge does not decrypt: {exc.__class__.__name__}")

    def _signed_claims(self, inner: str) -> tuple[dict, ExpectedRequest] | ChallengeVerdict:
        """The claims of the JWS `inner`, once its signer is trusted and its signature verifies."""
        try:
            signed_header = _jose_json(_b64decode(inner.split(".", 1)[0]))
            if inner.count(".") != 2 or not isinstance(signed_header, dict):
                raise ValueError("not a compact JWS")
        except ValueError as exc:
            return self._refuse(ErrorCode.CHALLENGE_DESERIALIZATION_ERROR, f"the decrypted challenge is not a JWS: {exc}")
        signer_thumbprint = signed_header.get(THUMBPRINT)
        signer = next((c for c in self.trusted_signers if jose_thumbprint(c) == signer_thumbprint), None)
        if signer is None:
            trusted = ", ".join(jose_thumbprint(c) for c in self.trusted_signers) or "none"
            return self._refuse(
                ErrorCode.SIGNING_CERT_THUMBPRINT_MISMATCH,
                f"the challenge is signed by {signer_thumbprint}, which is not a trusted signing certificate "
                f"(trusted: {trusted}); see 'scepd registry show' and 'scepd doctor'",
            )
        try:
            payload = jws.deserialize_compact(inner, _jwk(signer.public_key())).payload
        except _JOSE_FAULTS as exc:
            return self._refuse(ErrorCode.SIGNATURE_VALIDATION_FAILED, f"the challenge's signature does not verify: {exc.__class__.__name__}")
        try:
            claims = _jose_json(payload)
            expected = ExpectedRequest.from_claim(claims.get("req", {}))
            for claim in ("iat", "exp"):
                if not isinstance(claims.get(claim), int):
                    raise ValueError(f"{claim} must be an integer")
            if not isinstance(claims.get("jti"), str) or not claims["jti"]:
                raise ValueError("jti is missing")
        except (ValueError, TypeError, AttributeError) as exc:
            return self._refuse(ErrorCode.CHALLENGE_DESERIALIZATION_ERROR, f"the challenge's claims are malformed: {exc}")
        audience = claims.get("aud")
        if audience != self.audience and not (isinstance(audience, list) and self.audience in audience):
            return self._refuse(
                ErrorCode.CHALLENGE_DESERIALIZATION_ERROR,
                f"the challenge is for audience {audience!r}, not {self.audience!r}",
            )
        return claims, expected

    def _check_time(self, iat: int, exp: int) -> ChallengeVerdict | None:
        now = int(self.clock.now().timestamp())
        skew = int(self.clock_skew.total_seconds())
        if iat > now + skew or exp <= iat or exp - iat > self.max_lifetime.total_seconds():
            return self._refuse(
                ErrorCode.CHALLENGE_INVALID_TIMESTAMP,
                f"iat {iat} / exp {exp} are not a valid lifetime of at most "
                f"{int(self.max_lifetime.total_seconds())} s ending after now {now}",
            )
        if exp + skew < now:
            return self._refuse(ErrorCode.CHALLENGE_EXPIRED, f"the challenge expired {now - exp} s ago")
        return None

    def _compare(self, expected: ExpectedRequest, csr: CertificationRequest) -> ChallengeVerdict | None:
        mismatch = compare(expected, csr)
        return self._refuse(*mismatch) if mismatch else None

    def _spend(self, claims: dict, transaction_id: str, uow: UnitOfWork) -> ChallengeVerdict | None:
        # Inside the caller's unit of work, so that it is spent only if the certificate is recorded.
        expires = dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc)
        if not uow.use_challenge(claims["jti"], transaction_id, expires):
            return self._refuse(ErrorCode.CHALLENGE_REPLAYED, f"challenge {claims['jti']} has been used already")
        return None


def compare(expected: ExpectedRequest, csr: CertificationRequest) -> tuple[ErrorCode, str] | None:
    """The first way the CSR differs from what the MDM expected, as Intune names it."""
    if expected.subject is not None:
        if len(csr.subject) == 0:
            return ErrorCode.SUBJECT_NAME_MISSING, f"the CSR has no subject; expected '{expected.subject}'"
        try:
            wanted = x509.Name.from_rfc4514_string(expected.subject)
        except ValueError:
            return ErrorCode.CHALLENGE_DESERIALIZATION_ERROR, f"req.subject {expected.subject!r} is not an RFC 4514 name"
        if csr.subject != wanted:
            return ErrorCode.SUBJECT_NAME_MISMATCH, f"the CSR asks for '{csr.subject.rfc4514_string()}', expected '{wanted.rfc4514_string()}'"
    actual_sans = {san_text(n) for n in csr.subject_alternative_names}
    if expected.device_id is not None:
        device_uri = f"uri:{DEVICE_ID_URI_PREFIX}{expected.device_id}"
        if device_uri not in actual_sans:
            return ErrorCode.BAD_DEVICE_ID_IN_CHALLENGE, f"the CSR does not carry the device ID {expected.device_id} as {DEVICE_ID_URI_PREFIX}"
        actual_sans.discard(device_uri)
    wanted_sans = {canonical_san(s) for s in expected.sans}
    if wanted_sans:
        if not actual_sans:
            return ErrorCode.SUBJECT_ALT_NAME_MISSING, f"the CSR has no subjectAltName; expected {sorted(wanted_sans)}"
        if actual_sans != wanted_sans:
            return ErrorCode.SUBJECT_ALT_NAME_MISMATCH, f"the CSR asks for {sorted(actual_sans)}, expected {sorted(wanted_sans)}"
    if expected.key_usage:
        names = key_usage_names(csr.key_usage)
        if names != set(expected.key_usage):
            return ErrorCode.KEY_USAGE_MISMATCH, f"the CSR asks for key usage {sorted(names)}, expected {sorted(expected.key_usage)}"
    key = csr.public_key
    kind = "rsa" if isinstance(key, rsa.RSAPublicKey) else "ec"
    if expected.key_type is not None and expected.key_type != kind:
        return ErrorCode.KEY_LENGTH_MISMATCH, f"the CSR has an {kind.upper()} key, expected {expected.key_type.upper()}"
    if expected.min_key_size is not None and key.key_size < expected.min_key_size:
        return ErrorCode.KEY_LENGTH_MISMATCH, f"the CSR's key has {key.key_size} bits, expected at least {expected.min_key_size}"
    if expected.eku:
        requested = csr.extension(x509.oid.ExtensionOID.EXTENDED_KEY_USAGE)
        if requested is None:
            return ErrorCode.ENHANCED_KEY_USAGE_MISSING, f"the CSR requests no extended key usage; expected {list(expected.eku)}"
        if set(requested) != {eku_oid(e) for e in expected.eku}:
            return ErrorCode.ENHANCED_KEY_USAGE_MISMATCH, f"the CSR requests {[o.dotted_string for o in requested]}, expected {list(expected.eku)}"
    return None


def _jose_json(data: bytes):
    """A JOSE header or claims set, within MAX_JOSE_JSON_BYTES and peerjson's nesting limit
    (JsonRefused and malformed JSON are ValueErrors, refused by the phase that reads it)."""
    return peerjson.loads(data, max_bytes=MAX_JOSE_JSON_BYTES)


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad base64url: {exc}") from None


_Result = TypeVar("_Result")


class _Phases:
    """Times and logs each verification phase: passed, or refused with the refusal's code and reason."""

    def __init__(self, transaction_id: str) -> None:
        self.transaction_id = transaction_id

    def run(self, phase: str, step: Callable[..., _Result], *args) -> _Result:
        started = time.perf_counter()
        outcome = step(*args)
        refused = isinstance(outcome, ChallengeVerdict)
        fields = {
            "transaction_id": self.transaction_id,
            "phase": phase,
            "result": "fail" if refused else "pass",
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if refused:
            fields.update(code=outcome.refusal.code.value, reason=outcome.refusal.reason)
        log.log(logging.WARNING if refused else logging.INFO, "challenge phase", extra={"fields": fields})
        return outcome
