"""The SCEP service: one PKIOperation from request bytes to CertRep bytes, with no HTTP.

The steps of an enrollment are plain calls across the layers: protocol parses and opens the
message, the CA checks the request against policy, the registration point (challenge/) gives
its verdict, the CA signs, the store commits issuance and transaction together, and protocol
builds the CertRep. Every refusal is a `Refusal` value that ends as a CertRep FAILURE (or an
HTTP 400 when the message is too broken to answer), never as an exception at the edge.
May import: every layer below server/ (protocol, ca, challenge, store, registry, errors).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography import x509

from scepd.ca.authority import CertificateAuthority, IssuancePolicy
from scepd.ca.keys import KeyPair
from scepd.challenge import (
    ChallengeRequest,
    ChallengeValidator,
    FirstAccepting,
    OneTimePasswordValidator,
    StaticChallengeValidator,
)
from scepd.errors import ErrorCode, Refusal, refusal_from_protocol
from scepd.protocol import MessageType, PkiStatus, ProtocolError
from scepd.protocol import cms
from scepd.protocol.caps import SERVER_CAPABILITIES, format_caps
from scepd.protocol.csr import CertificationRequest, parse_csr
from scepd.protocol.message import CertRepReply, PkiMessage, build_cert_rep, parse_pki_message
from scepd.registry.config import parse_duration
from scepd.registry.instance import Instance, KeyMaterial
from scepd.store import Store
from scepd.store.store import IntegrityError

log = logging.getLogger("scepd.enrollment")

CA_RA_CERT = "application/x-x509-ca-ra-cert"
CA_CERT = "application/x-x509-ca-cert"
PKI_MESSAGE = "application/x-pki-message"

# The message types this server issues for; the rest of RFC 8894 comes with polling.
_ENROLLMENT_TYPES = {MessageType.PKCS_REQ, MessageType.RENEWAL_REQ}


@dataclass
class OperationResult:
    """The answer to one PKIOperation and what the log line says about it."""

    http_status: int
    content_type: str
    body: bytes
    transaction_id: str | None = None
    message_type: str | None = None
    status: str = "FAILURE"
    refusal: Refusal | None = None
    serial: str | None = None
    details: dict = field(default_factory=dict)


def public_key_sha256(public_key) -> str:
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def build_validator(instance: Instance) -> ChallengeValidator:
    validators: list[ChallengeValidator] = []
    if instance.config.challenge.static:
        validators.append(StaticChallengeValidator(instance.config.challenge.static))
    if instance.config.challenge.one_time_passwords:
        validators.append(OneTimePasswordValidator())
    return FirstAccepting(tuple(validators))


class EnrollmentService:
    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        ra: KeyPair,
        store: Store,
        validator: ChallengeValidator,
        policy: IssuancePolicy,
        max_clock_skew: dt.timedelta,
    ) -> None:
        self.ca = ca
        self.ra = ra
        self.store = store
        self.validator = validator
        self.policy = policy
        self.max_clock_skew = max_clock_skew
        # Answers that never change are built once, not per request.
        self.ca_caps = format_caps(SERVER_CAPABILITIES)
        self.ca_certs = cms.build_certs_only([ra.certificate, ca.certificate])
        self._recipients = [(ra.certificate, ra.key)]
        if isinstance(ca.pair.key, rsa.RSAPrivateKey):
            # Some clients encrypt to the CA certificate when they see one; accept that too.
            self._recipients.append((ca.certificate, ca.pair.key))

    @classmethod
    def from_instance(cls, instance: Instance, material: KeyMaterial, store: Store) -> "EnrollmentService":
        return cls(
            ca=material.ca,
            ra=material.ra,
            store=store,
            validator=build_validator(instance),
            policy=instance.config.policy,
            max_clock_skew=parse_duration(instance.config.scep.max_clock_skew),
        )

    # --- PKIOperation -------------------------------------------------------------------

    def pki_operation(self, der: bytes) -> OperationResult:
        try:
            message = parse_pki_message(der, (self.ra.certificate, self.ca.certificate))
        except ProtocolError as exc:
            refusal = refusal_from_protocol(exc)
            return OperationResult(400, "text/plain", _plain(refusal), refusal=refusal)
        try:
            reply, details = self._answer(message)
        except Exception:
            log.exception("bug while answering transaction %s", message.transaction_id)
            reply = _failure(Refusal(ErrorCode.INTERNAL_ERROR, "the server failed to process the request"))
            details = {}
        return self._cert_rep(message, reply, details)

    def _cert_rep(self, message: PkiMessage, reply, details) -> OperationResult:
        reply_body, refusal, decrypted, serial = reply
        body = build_cert_rep(
            message,
            reply_body,
            signer_certificate=self.ra.certificate,
            signer_key=self.ra.key,
            cipher=decrypted.cipher if decrypted else cms.ContentCipher.DES_EDE3_CBC,
            key_transport=decrypted.key_transport if decrypted else cms.PKCS1V15,
        )
        return OperationResult(
            200,
            "application/x-pki-message",
            body,
            transaction_id=message.transaction_id,
            message_type=message.message_type.name,
            status=reply_body.status.name,
            refusal=refusal,
            serial=serial,
            details=details,
        )

    def _answer(self, message: PkiMessage):
        """(CertRepReply, refusal, decrypted, serial), details for the log."""
        details: dict = {}
        refusal = self._check_envelope_signer(message)
        if refusal:
            return _failure(refusal), details
        try:
            decrypted = cms.decrypt_enveloped(message.envelope, self._recipients)
            details["cipher"] = decrypted.cipher.value
            csr = parse_csr(decrypted.content)
        except ProtocolError as exc:
            return _failure(refusal_from_protocol(exc)), details
        details["subject"] = csr.subject.rfc4514_string()
        key_digest = public_key_sha256(csr.public_key)

        previous = self.store.find_issued(message.transaction_id)
        if previous is not None:
            return self._resend(previous, key_digest, decrypted), details

        refusal = self.policy.check(csr)
        if refusal:
            return _failure(refusal, decrypted), details
        return self._issue(message, csr, key_digest, decrypted, details), details

    def _check_envelope_signer(self, message: PkiMessage) -> Refusal | None:
        if message.signer_certificate is None:
            return Refusal(ErrorCode.MESSAGE_SIGNER_UNKNOWN, message.signature_error or "no signer certificate")
        if message.signature_error:
            return Refusal(ErrorCode.MESSAGE_SIGNATURE_INVALID, message.signature_error)
        if message.message_type not in _ENROLLMENT_TYPES:
            return Refusal(
                ErrorCode.MESSAGE_TYPE_UNSUPPORTED,
                f"{message.message_type.name} is not supported by this server version",
            )
        signing_time = (message.other_attributes.get("signing_time") or [None])[0]
        if isinstance(signing_time, dt.datetime):
            drift = abs(dt.datetime.now(dt.timezone.utc) - signing_time)
            if drift > self.max_clock_skew:
                return Refusal(
                    ErrorCode.MESSAGE_TIME_INVALID,
                    f"the message was signed at {signing_time:%Y-%m-%d %H:%M:%S}Z, "
                    f"{int(drift.total_seconds())} s from the server's clock",
                )
        if not isinstance(message.signer_certificate.public_key(), rsa.RSAPublicKey):
            return Refusal(
                ErrorCode.RECIPIENT_KEY_NOT_RSA,
                "the signer certificate is not RSA, so the certificate cannot be encrypted back to it",
            )
        return None

    def _resend(self, previous, key_digest: str, decrypted: cms.Decrypted):
        if previous.public_key_sha256 != key_digest:
            return _failure(
                Refusal(
                    ErrorCode.TRANSACTION_ID_REUSED,
                    "this transactionID was already used to certify a different key",
                ),
                decrypted,
            )
        cert = x509.load_der_x509_certificate(previous.certificate_der)
        return _success(cert, decrypted)

    def _issue(self, message: PkiMessage, csr: CertificationRequest, key_digest: str, decrypted, details):
        challenge = ChallengeRequest(message.transaction_id, csr.challenge_password, csr)
        try:
            with self.store.unit_of_work() as uow:
                verdict = self.validator.verify(challenge, uow)
                details["validator"] = verdict.validator
                if not verdict.accepted:
                    return _failure(verdict.refusal, decrypted)
                cert = self.ca.issue(csr, self.policy)
                uow.record_issuance(
                    transaction_id=message.transaction_id,
                    message_type=message.message_type.name,
                    public_key_sha256=key_digest,
                    serial=format(cert.serial_number, "x"),
                    subject=cert.subject.rfc4514_string(),
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    sha256=cms.certificate_sha256(cert),
                    der=cert.public_bytes(Encoding.DER),
                )
        except IntegrityError:
            # The same transaction was committed meanwhile (a resend racing the original,
            # perhaps on another server): answer with what was stored.
            previous = self.store.find_issued(message.transaction_id)
            if previous is None:
                raise
            return self._resend(previous, key_digest, decrypted)
        return _success(cert, decrypted)


def _success(cert: x509.Certificate, decrypted):
    return CertRepReply(PkiStatus.SUCCESS, (cert,)), None, decrypted, format(cert.serial_number, "x")


def _failure(refusal: Refusal, decrypted=None):
    reply = CertRepReply(PkiStatus.FAILURE, fail_info=refusal.fail_info, fail_info_text=refusal.fail_info_text)
    return reply, refusal, decrypted, None


def _plain(refusal: Refusal) -> bytes:
    return f"{refusal.fail_info_text}\nRemedy: {refusal.remedy}\n".encode("utf-8")
