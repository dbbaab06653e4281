"""The OCSP responder (RFC 6960): what the status of a certificate is, signed, with no HTTP.

`OcspResponder.respond(der)` takes an OCSPRequest and always returns an OCSPResponse (never
raises for what a client sent): malformedRequest for what cannot be read (cryptography reads
one certificate per request, so a request for several is refused that way too),
unauthorized for an issuer that is none of our CAs (current, previous or next, matched by the
request's issuerNameHash and issuerKeyHash in the request's own digest), tryLater while the
store cannot answer or the key that signs is unavailable (a PKCS#11 token away). Otherwise good, revoked (time and reason) or unknown, read from the
store at every query: a revocation by any server sharing the database shows at the next
query. A serial the CA never issued (or not through scepd's store) is unknown.

Signing is what costs, so a signed response is kept per (CA, serial, digest) with the status
it states, and served while the status stays the same and until half its validity has passed
(so a relying party caching it to nextUpdate always finds a fresher one). A request with a
nonce gets the nonce back in a response signed for it, never cached.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import logging
import threading
from dataclasses import dataclass

from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp

from scepd.ca.authority import CertificateAuthority
from scepd.ca.crl import REASONS
from scepd.ca.ocsp_signer import CaSigns, DelegatedSigners, Signer, signing_hash
from scepd.ca.signing import sign_with
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol.errors import KeyUnavailable
from scepd.store import CertificateState, Store, StoreUnavailable

log = logging.getLogger("scepd.ocsp")

# The digests a CertID may be computed with (RFC 6960 and RFC 5019 name SHA-1; SHA-2 is
# what newer clients send).
CERT_ID_HASHES = {"sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
                  "sha384": hashes.SHA384, "sha512": hashes.SHA512}
# RFC 8954 2.1: a nonce is 1 to 32 octets; a longer one is refused as malformed.
MAX_NONCE = 32
# Signed responses kept per process when the configuration does not say ([ocsp] cache_size).
DEFAULT_CACHE_SIZE = 10000

REASON_NAMES = {flag: name for name, flag in REASONS.items()}


@dataclass(frozen=True)
class OcspAnswer:
    """An OCSPResponse as DER, what it says, and until when an HTTP cache may keep it
    (`next_update` for a cacheable successful response; None otherwise)."""

    der: bytes
    status: str  # successful's cert status (good, revoked, unknown) or the response status
    serial: str | None = None
    next_update: dt.datetime | None = None
    this_update: dt.datetime | None = None
    cached: bool = False


@dataclass(frozen=True)
class _Entry:
    state: tuple
    answer: OcspAnswer
    refresh_at: dt.datetime


def _key_hash(ca: CertificateAuthority, algorithm: str) -> bytes:
    """H(subjectPublicKey): the BIT STRING's value, without its tag, length and unused bits."""
    spki = ca.certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.new(algorithm, bytes(asn1_keys.PublicKeyInfo.load(spki)["public_key"])).digest()


def unsuccessful(status: ocsp.OCSPResponseStatus) -> OcspAnswer:
    """An answer that is only a status (RFC 6960 4.2.1 names them in camel case, as logged)."""
    response = ocsp.OCSPResponseBuilder.build_unsuccessful(status)
    first, *rest = status.name.lower().split("_")
    return OcspAnswer(response.public_bytes(Encoding.DER), first + "".join(w.title() for w in rest))


MALFORMED = unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
UNAUTHORIZED = unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
TRY_LATER = unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
INTERNAL_ERROR = unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)


@dataclass(frozen=True)
class _Question:
    """One request as read: whose certificate, in which digest, with which nonce."""

    algorithm: str
    name_hash: bytes
    key_hash: bytes
    serial: int
    nonce: bytes | None


def read_request(der: bytes) -> _Question | None:
    """The request's one question; None when it cannot be read (malformed, several
    certificates, an extension given twice, an unknown digest, a nonce RFC 8954 refuses, a
    negative serial, which no certificate has and no response can state)."""
    try:
        request = ocsp.load_der_ocsp_request(der)
        algorithm = request.hash_algorithm.name
        try:
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            nonce = None
        question = _Question(algorithm, request.issuer_name_hash, request.issuer_key_hash, request.serial_number, nonce)
    # DuplicateExtension is no ValueError: two nonces (or any extension twice) end up here too.
    except (ValueError, NotImplementedError, UnsupportedAlgorithm, TypeError, x509.DuplicateExtension):
        return None
    if algorithm not in CERT_ID_HASHES or (nonce is not None and not 1 <= len(nonce) <= MAX_NONCE):
        return None
    if question.serial < 0:
        return None
    return question


class OcspResponder:
    """Answers for `cas` (every CA of the instance) from `store`, signed by `signers`
    (`DelegatedSigners` or `CaSigns`); responses are valid `validity` (nextUpdate -
    thisUpdate, never past the signer's end)."""

    def __init__(self, store: Store, cas: tuple[CertificateAuthority, ...], signers: DelegatedSigners | CaSigns,
                 validity: dt.timedelta = dt.timedelta(hours=1), clock: Clock = SYSTEM_CLOCK,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.store = store
        self.cas = cas
        self.signers = signers
        self.validity = validity
        self.clock = clock
        self.cache_size = cache_size
        self.signatures = 0  # responses signed by this responder (the benchmark and tests count)
        # The answers the HTTP edge gives without asking: to what it cannot read, and on a bug.
        self.malformed = MALFORMED
        self.internal_error = INTERNAL_ERROR
        self._cache: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._issuers = {(name, hashlib.new(name, ca.certificate.subject.public_bytes()).digest(), _key_hash(ca, name)): ca
                         for ca in cas for name in CERT_ID_HASHES}

    def prepare(self) -> None:
        """Make sure every CA's signer exists now (at start, not at the first query). A token
        away does not keep the server from starting: its queries get tryLater until it is back."""
        for ca in self.cas:
            try:
                self.signers.signer_for(ca)
            except KeyUnavailable as exc:
                log.warning("ocsp signer for CA %s not ready: %s", ca.key_id, exc.reason)

    def respond(self, der: bytes) -> OcspAnswer:
        question = read_request(der)
        if question is None:
            return MALFORMED
        ca = self._issuers.get((question.algorithm, question.name_hash, question.key_hash))
        if ca is None:
            return UNAUTHORIZED
        try:
            state = self._state(ca, question.serial)
        except StoreUnavailable:
            return TRY_LATER
        if question.nonce is not None:
            return self._signed_or_try_later(ca, question, state)
        key = (ca.key_id, question.serial, question.algorithm)
        now = self.clock.now()
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry.state == state and now < entry.refresh_at:
                self._cache.move_to_end(key)
                return _as_cached(entry.answer)
        answer = self._signed_or_try_later(ca, question, state)
        if answer is TRY_LATER:
            # What was signed before still holds until its nextUpdate: better than tryLater.
            still = entry is not None and entry.state == state and now < entry.answer.next_update
            return _as_cached(entry.answer) if still else answer
        this_update = answer.this_update or now
        entry = _Entry(state, answer, this_update + (answer.next_update - this_update) / 2)
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return answer

    def _state(self, ca: CertificateAuthority, serial: int) -> tuple:
        """(status, revoked at, reason) as the store has it now; unknown for a serial this CA
        did not issue through scepd."""
        record = self.store.find_certificate(format(serial, "x"))
        if record is None or record.issuer_key_id != ca.key_id:
            return (ocsp.OCSPCertStatus.UNKNOWN, None, None)
        if record.status is CertificateState.REVOKED:
            return (ocsp.OCSPCertStatus.REVOKED, record.revoked_at, record.revocation_reason)
        return (ocsp.OCSPCertStatus.GOOD, None, None)

    def _signed_or_try_later(self, ca: CertificateAuthority, question: _Question, state: tuple) -> OcspAnswer:
        """The signed answer; tryLater while the signing key cannot be used (a relying party
        asks again, and a token coming back is used at the next query)."""
        try:
            return self._sign(ca, question, state)
        except KeyUnavailable as exc:
            log.warning("ocsp: cannot sign for CA %s: %s", ca.key_id, exc.reason)
            return TRY_LATER

    def _sign(self, ca: CertificateAuthority, question: _Question, state: tuple) -> OcspAnswer:
        status, revoked_at, reason_name = state
        signer: Signer = self.signers.signer_for(ca)
        now = self.clock.now()
        next_update = min(now + self.validity, signer.not_after)
        reason = REASONS.get(reason_name or "unspecified")
        # RFC 5280 5.3.1, which OCSP follows: "unspecified" is left out rather than stated.
        reason = None if reason is x509.ReasonFlags.unspecified else reason
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(question.name_hash, question.key_hash, question.serial,
                                  CERT_ID_HASHES[question.algorithm](), status, now, next_update,
                                  revoked_at if status is ocsp.OCSPCertStatus.REVOKED else None, reason)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, signer.pair.certificate)
        )
        if signer.delegated:
            # A subordinate CA's certificate goes along: a relying party holding only the
            # root then still finds the path to the signer.
            subordinate = ca.certificate.issuer != ca.certificate.subject
            builder = builder.certificates([signer.pair.certificate, *([ca.certificate] if subordinate else [])])
        if question.nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(question.nonce), critical=False)
        response = sign_with(builder, signer.pair.key, signing_hash(signer.pair.key))
        with self._lock:
            self.signatures += 1
        return OcspAnswer(response.public_bytes(Encoding.DER), status.name.lower(), format(question.serial, "x"),
                          next_update=next_update if question.nonce is None else None, this_update=now)


def _as_cached(answer: OcspAnswer) -> OcspAnswer:
    return OcspAnswer(answer.der, answer.status, answer.serial, answer.next_update, answer.this_update, cached=True)


__all__ = ["CaSigns", "DelegatedSigners", "OcspAnswer", "OcspResponder", "read_request"]
