"""The SCEP service: one PKIOperation from request bytes to CertRep bytes, with no HTTP.

The steps are plain calls across the layers: protocol parses and opens the message; the
template is chosen (NDES mapping) and checks the request; the registration point (challenge/)
gives its verdict, or the certificate that signed a renewal stands in for it; the CA signs;
the store commits issuance and transaction together; protocol builds the CertRep. Every
refusal is a `Refusal` value that ends as a CertRep FAILURE (or an HTTP 400 when the message
is too broken to answer), never as an exception at the edge.
May import: every layer below server/ (protocol, ca, challenge, store, registry, errors).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import logging
import unicodedata
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scepd.ca.authority import CertificateAuthority
from scepd.ca.crl import REASONS as REVOCATION_REASONS
from scepd.ca.crl import CrlPublisher
from scepd.ca.templates import Template, TemplateMapping, widened_identity
from scepd.challenge import (
    ChallengeRequest,
    ChallengeValidator,
    FirstAccepting,
    OneTimePasswordValidator,
    StaticChallengeValidator,
)
from scepd.challenge.mdm import MdmChallengeValidator
from scepd.challenge.remote import (
    BearerToken,
    RemoteRegistrationPoint,
    WebhookValidator,
)
from scepd.errors import ErrorCode, Refusal, refusal_from_protocol
from scepd.protocol import MessageType, PkiStatus, ProtocolError, cms
from scepd.protocol.caps import SERVER_CAPABILITIES, format_caps
from scepd.protocol.csr import CertificationRequest, parse_csr, without_challenge_password
from scepd.protocol.message import (
    CertRepReply,
    PkiMessage,
    build_cert_rep,
    decode_issuer_and_serial,
    decode_issuer_and_subject,
    parse_pki_message,
)
from scepd.registry.config import parse_duration
from scepd.registry.instance import Instance, KeyMaterial
from scepd.registry.rp import load_rp_material
from scepd.store import (
    CertificateRecord,
    IntegrityError,
    Store,
    StoreUnavailable,
    TransactionRecord,
    UnitOfWork,
)

log = logging.getLogger("scepd.enrollment")

CA_RA_CERT = "application/x-x509-ca-ra-cert"
CA_CERT = "application/x-x509-ca-cert"
NEXT_CA_CERT = "application/x-x509-next-ca-cert"
PKI_MESSAGE = "application/x-pki-message"


def public_key_sha256(public_key) -> str:
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def request_fingerprint(message: PkiMessage, stored_csr: bytes) -> str:
    """What makes a request the same request: its message type, its PKCS#10 request (as
    stored, without the challenge) and the certificate that signed it. Only a request with
    the same fingerprint under the same transactionID is a resend."""
    h = hashlib.sha256()
    for part in (message.message_type.value.encode(), stored_csr, message.signer_certificate.public_bytes(Encoding.DER)):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _is_control(ch: str) -> bool:
    """A character that can make a name display as something else: C0/C1 controls and DEL,
    line and paragraph separators, and bidirectional overrides and isolates."""
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp") or "\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069"


def remote_token(instance: Instance) -> BearerToken:
    c = instance.config.challenge
    return BearerToken(c.remote_token, c.token_url, c.client_id, c.client_secret, c.scope, c.remote_timeout)


def build_local_validator(instance: Instance) -> ChallengeValidator:
    """The registration point in this process: MDM challenges, the static challenge,
    one-time passwords and the MDM webhook, as configured; the first that accepts wins."""
    rp = instance.config.registration_point
    challenge = instance.config.challenge
    material = load_rp_material(instance)
    validators: list[ChallengeValidator] = [
        MdmChallengeValidator(
            encryption=(material.encryption.certificate, material.encryption.key) if material.encryption else None,
            trusted_signers=material.trusted,
            audience=rp.audience,
            clock_skew=parse_duration(rp.clock_skew),
            max_lifetime=parse_duration(rp.challenge_lifetime),
        )
    ]
    if challenge.static:
        validators.append(StaticChallengeValidator(challenge.static))
    if challenge.one_time_passwords:
        validators.append(OneTimePasswordValidator())
    if challenge.webhook_url:
        validators.append(WebhookValidator(challenge.webhook_url, instance.config.notifications.hmac_secret,
                                           challenge.remote_timeout))
    return FirstAccepting(tuple(validators))


def build_validator(instance: Instance, local: ChallengeValidator, token: BearerToken | None = None) -> ChallengeValidator:
    """What the SCEP server asks: the `local` registration point, or a remote one (with
    `token`, shared by the caller so that an OAuth2 token is fetched once per process)."""
    challenge = instance.config.challenge
    if challenge.mode == "remote":
        return RemoteRegistrationPoint(challenge.remote_url, token or remote_token(instance), challenge.remote_timeout)
    return local


def build_validators(instance: Instance) -> ChallengeValidator:
    """What the SCEP server of `instance` asks, as `scepd serve` builds it (start-up checks
    and doctor read its readiness)."""
    return build_validator(instance, build_local_validator(instance))


def notification_targets(instance: Instance) -> dict[str, tuple[str, ...]]:
    """Where successes and failures are told: the webhooks and, in remote mode, the
    registration point's notification endpoints (as Intune expects them)."""
    config = instance.config
    targets = {"success": config.notifications.webhooks, "failure": config.notifications.webhooks}
    if config.challenge.mode == "remote":
        base = config.challenge.remote_url.rstrip("/")
        targets = {kind: (*urls, f"{base}/{kind}Notification") for kind, urls in targets.items()}
    return targets


@dataclass(frozen=True)
class Outcome:
    """What one request comes to, before it is written as a CertRep."""

    reply: CertRepReply
    refusal: Refusal | None = None
    serial: str | None = None

    @classmethod
    def failure(cls, refusal: Refusal) -> "Outcome":
        reply = CertRepReply(PkiStatus.FAILURE, fail_info=refusal.fail_info, fail_info_text=refusal.fail_info_text)
        return cls(reply, refusal)

    @classmethod
    def refuse(cls, code: ErrorCode, reason: str) -> "Outcome":
        return cls.failure(Refusal(code, reason))

    @classmethod
    def success(cls, cert: x509.Certificate) -> "Outcome":
        return cls(CertRepReply(PkiStatus.SUCCESS, (cert,)), serial=format(cert.serial_number, "x"))

    @classmethod
    def pending(cls) -> "Outcome":
        return cls(CertRepReply(PkiStatus.PENDING))


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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Stop(Exception):
    """Ends an enrollment inside its unit of work (rolling it back) with an outcome."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


class EnrollmentService:
    def __init__(
        self,
        *,
        material: KeyMaterial,
        store: Store,
        validator: ChallengeValidator,
        templates: dict[str, Template],
        mapping: TemplateMapping,
        max_clock_skew: dt.timedelta,
        crls: CrlPublisher | None = None,
        local_validator: ChallengeValidator | None = None,
        notify: dict[str, tuple[str, ...]] | None = None,
        allow_md5: bool = False,
        allow_des: bool = True,
    ) -> None:
        self.material = material
        self.allow_md5 = allow_md5
        self.allow_des = allow_des
        self.store = store
        self.validator = validator
        self.templates = templates
        self.mapping = mapping
        self.max_clock_skew = max_clock_skew
        self.crls = crls or CrlPublisher(store)
        # The registration point's own verdicts (its HTTP API), even when SCEP asks a remote one.
        self.local_validator = local_validator or validator
        self.notify = notify or {}
        # Answers that never change are built once, not per request.
        self.ca_caps = format_caps(SERVER_CAPABILITIES + (("GetNextCACert",) if material.next_ca else ()))
        if material.ra.certificate == material.ca.certificate and not material.previous_cas:
            self.ca_certs = (CA_CERT, material.ca.certificate.public_bytes(Encoding.DER))  # no RA
        else:
            self.ca_certs = (CA_RA_CERT, cms.build_certs_only(material.ca_ra_certificates))
        self.next_ca_certs = self._build_next_ca_certs()
        self._known = tuple(c.certificate for c in material.all_cas) + tuple(r.certificate for r in material.all_ras)
        self._recipients = [(r.certificate, r.key) for r in material.all_ras]
        for ca in material.all_cas:
            if isinstance(ca.pair.key, rsa.RSAPrivateKey):
                # Some clients encrypt to the CA certificate when they see one; accept that too.
                self._recipients.append((ca.certificate, ca.pair.key))
        # Names no device may take: a certificate with our CA's name could pass for it.
        self._own_names = {c.certificate.subject for c in material.all_cas} | {r.certificate.subject for r in material.all_ras}

    instance: Instance | None = None  # set when built from an instance (the HTTP APIs use it)

    @classmethod
    def from_instance(
        cls, instance: Instance, material: KeyMaterial, store: Store, token: BearerToken | None = None
    ) -> "EnrollmentService":
        config = instance.config
        local = build_local_validator(instance)  # reads the registration point's files once
        service = cls(
            material=material,
            store=store,
            validator=build_validator(instance, local, token),
            templates=config.templates,
            mapping=config.template_mapping,
            max_clock_skew=parse_duration(config.scep.max_clock_skew),
            crls=CrlPublisher(store, parse_duration(config.crl.validity)),
            local_validator=local,
            notify=notification_targets(instance),
            allow_md5=config.scep.allow_md5,
            allow_des=config.scep.allow_des,
        )
        service.instance = instance
        return service

    @property
    def ca(self) -> CertificateAuthority:
        return self.material.ca

    def _build_next_ca_certs(self) -> bytes | None:
        """GetNextCACert (RFC 8894 3.5.3): the next CA (and RA) as certs-only, inside a
        SignedData signed by the current RA so that clients can trust it."""
        if self.material.next_ca is None:
            return None
        certs = [self.material.next_ca.certificate]
        if self.material.next_ra is not None:
            certs.insert(0, self.material.next_ra.certificate)
        inner = cms.build_certs_only(certs)
        ra = self.material.ra
        return cms.build_signed_data(inner, ra.certificate, ra.key, "sha256", [])

    def issuer_for(self, template: Template) -> CertificateAuthority | None:
        """The active CA, or the one the template pins by key id (during a rollover overlap,
        a template may keep issuing from the previous CA)."""
        return self.ca if template.ca == "active" else self.ca_for_key_id(template.ca)

    def ca_for_key_id(self, key_id: str) -> CertificateAuthority | None:
        return next((ca for ca in self.material.all_cas if ca.key_id == key_id), None)

    # --- PKIOperation -------------------------------------------------------------------

    def pki_operation(self, der: bytes, client: str | None = None) -> OperationResult:
        try:
            message = parse_pki_message(der, self._known)
        except ProtocolError as exc:
            refusal = refusal_from_protocol(exc)
            return OperationResult(400, "text/plain; charset=utf-8", refusal.http_text.encode(), refusal=refusal)
        details: dict = {}
        decrypted = None
        try:
            refusal = self._check_signed(message)
            if refusal:
                outcome = Outcome.failure(refusal)
            else:
                decrypted = cms.decrypt_enveloped(message.envelope, self._recipients)
                details["cipher"] = decrypted.cipher.value
                outcome = self._handle(message, decrypted, client, details)
        except ProtocolError as exc:
            outcome = Outcome.failure(refusal_from_protocol(exc))
        except StoreUnavailable as exc:
            # Expected and transient (locked past busy_timeout, disk full): a named refusal,
            # logged once by the request's own line, with no traceback.
            outcome = Outcome.refuse(ErrorCode.STORE_UNAVAILABLE, exc.reason)
        except Exception:
            log.exception("bug while answering transaction %s", message.transaction_id)
            outcome = Outcome.refuse(ErrorCode.INTERNAL_ERROR, "the server failed to process the request")
        if outcome.refusal and message.message_type in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
            self._notify_failure(message, outcome.refusal, details)
        try:
            body = self._cert_rep(message, outcome, decrypted)
        except Exception:
            # Cannot happen for a message that passed _check_signed; if it does, the client
            # still gets a signed FAILURE (it carries no envelope to go wrong).
            log.exception("bug while writing the CertRep of %s", message.transaction_id)
            outcome = Outcome.refuse(ErrorCode.INTERNAL_ERROR, "the server failed to write its reply")
            body = self._cert_rep(message, outcome, None)
        return OperationResult(
            200,
            PKI_MESSAGE,
            body,
            transaction_id=message.transaction_id,
            message_type=message.message_type.name,
            status=outcome.reply.status.name,
            refusal=outcome.refusal,
            serial=outcome.serial,
            details=details,
        )

    def _cert_rep(self, message: PkiMessage, outcome: Outcome, decrypted: cms.Decrypted | None) -> bytes:
        return build_cert_rep(
            message,
            outcome.reply,
            signer_certificate=self.material.ra.certificate,
            signer_key=self.material.ra.key,
            # The reply is sealed the way the client sealed its request (never downgraded).
            cipher=decrypted.cipher if decrypted else cms.ContentCipher.AES_128_CBC,
            key_transport=decrypted.key_transport if decrypted else cms.PKCS1V15,
        )

    def _notify_failure(self, message: PkiMessage, refusal: Refusal, details: dict) -> None:
        payload = {
            "transactionId": message.transaction_id,
            "errorCode": refusal.code.value,
            "errorDescription": refusal.reason,
            "hResult": -2147024809,  # E_INVALIDARG, as Intune's failureNotification expects a number
            "subject": details.get("subject"),
            "callerInfo": "scepd",
        }
        if refusal.code is ErrorCode.STORE_UNAVAILABLE:
            # Queuing it would wait for the same store a second time, before the reply; the
            # request's log line says it was not queued.
            details["notification"] = "not queued: the store is unavailable"
            return
        try:
            with self.store.unit_of_work() as uow:
                uow.add_notification("failure", message.transaction_id, payload, self.notify.get("failure", ()))
        except StoreUnavailable as exc:
            details["notification"] = f"not queued: {exc.reason}"
        except Exception:  # never let telling about a failure turn into another one
            log.exception("could not queue the failure notification of %s", message.transaction_id)

    # --- the registration point's API --------------------------------------------------------

    def validate_request(self, transaction_id: str, csr_der: bytes) -> tuple[str, str]:
        """Intune's validateRequest: ("Success", "") or (error code, description)."""
        try:
            csr = parse_csr(csr_der)
        except ProtocolError as exc:
            return exc.code, exc.reason
        try:
            with self.store.unit_of_work() as uow:
                verdict = self.local_validator.verify(ChallengeRequest(transaction_id, csr.challenge_password, csr), uow)
                if not verdict.accepted:
                    raise _Stop(Outcome.failure(verdict.refusal))
        except _Stop as stop:
            return stop.outcome.refusal.code.value, stop.outcome.refusal.reason
        return "Success", ""

    def record_received(self, kind: str, payload: dict) -> None:
        """A success or failure notification sent to this registration point."""
        transaction_id = str(payload.get("transactionId") or "")
        request = payload.get("certificateRequest")
        if isinstance(request, str):
            # A SCEP server may tell the request with its challenge in it: not kept in clear.
            try:
                stripped = without_challenge_password(base64.b64decode(request, validate=True))
                payload = {**payload, "certificateRequest": base64.b64encode(stripped).decode("ascii")}
            except (ValueError, ProtocolError):
                payload = {**payload, "certificateRequest": None}
        with self.store.unit_of_work() as uow:
            uow.add_notification(f"received-{kind}", transaction_id, payload, ())

    def _handle(self, message: PkiMessage, decrypted: cms.Decrypted, client: str | None, details: dict) -> Outcome:
        if decrypted.cipher is cms.ContentCipher.DES_CBC:
            if not self.allow_des:
                return Outcome.refuse(ErrorCode.ALGORITHM_REFUSED, "the request is encrypted with single DES ([scep] allow_des = false)")
            # Accepted (Go clients and older network gear offer nothing else), but an
            # administrator should know which clients still use it.
            log.warning("weak cipher: single DES from client %s (transaction %r); [scep] allow_des = false refuses it",
                        client, message.transaction_id)
        content = decrypted.content
        kind = message.message_type
        if kind in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
            return self._enroll(message, parse_csr(content), client, details)
        if kind is MessageType.CERT_POLL:
            decode_issuer_and_subject(content)  # the transactionID identifies the request
            return self._poll(message)
        if kind in (MessageType.GET_CERT, MessageType.GET_CRL):
            issuer, serial = decode_issuer_and_serial(content)
            return self._retrieve(message, issuer, serial)
        return Outcome.refuse(ErrorCode.MESSAGE_TYPE_UNSUPPORTED, f"{kind.name} is not a request")

    def _check_signed(self, message: PkiMessage) -> Refusal | None:
        if message.signer_certificate is None:
            return Refusal(ErrorCode.MESSAGE_SIGNER_UNKNOWN, message.signature_error or "no signer certificate")
        if message.signature_error:
            return Refusal(ErrorCode.MESSAGE_SIGNATURE_INVALID, message.signature_error)
        signing_time = (message.other_attributes.get("signing_time") or [None])[0]
        if isinstance(signing_time, dt.datetime):
            drift = abs(_now() - signing_time)
            if drift > self.max_clock_skew:
                return Refusal(
                    ErrorCode.MESSAGE_TIME_INVALID,
                    f"the message was signed at {signing_time:%Y-%m-%d %H:%M:%S}Z, "
                    f"{int(drift.total_seconds())} s from the server's clock",
                )
        return None

    # --- who signed ---------------------------------------------------------------------

    def _requester_certificate(self, message: PkiMessage) -> tuple[CertificateRecord | None, Refusal | None]:
        """The certificate of ours that signed the request, if one did, checked for use.

        (None, None): signed by something else (a self-signed key, another CA).
        """
        signer = message.signer_certificate
        if not any(ca.issued(signer) for ca in self.material.all_cas):
            return None, None
        record = self.store.find_certificate(format(signer.serial_number, "x"))
        if record is None or record.der != signer.public_bytes(Encoding.DER):
            return None, Refusal(
                ErrorCode.SIGNER_CERTIFICATE_UNKNOWN,
                f"the request is signed by serial {signer.serial_number:x}, which this CA has no record of",
            )
        if record.status == "revoked":
            return None, Refusal(
                ErrorCode.SIGNER_CERTIFICATE_REVOKED,
                f"the signing certificate {record.serial} was revoked ({record.revocation_reason})",
            )
        if record.not_after <= _now():
            return None, Refusal(
                ErrorCode.SIGNER_CERTIFICATE_EXPIRED,
                f"the signing certificate {record.serial} expired on {record.not_after:%Y-%m-%d}",
            )
        return record, None

    # --- PKCSReq and RenewalReq ----------------------------------------------------------

    def template_for(self, csr: CertificationRequest) -> tuple[str, Template | None]:
        purpose = self.mapping.purpose(csr)
        name = getattr(self.mapping, purpose)
        return f"{purpose}={name}", self.templates.get(name)

    def _enroll(self, message: PkiMessage, csr: CertificationRequest, client: str | None, details: dict) -> Outcome:
        details["subject"] = csr.subject.rfc4514_string()
        refusal = self._policy_refusal(message, csr)
        if refusal:
            return Outcome.failure(refusal)
        stored_csr = without_challenge_password(csr.der)  # no challenge is kept in clear
        fingerprint = request_fingerprint(message, stored_csr)
        resent = self._stored_request(message.transaction_id, fingerprint)
        if resent is not None:
            return self._status_of(resent)
        # Anything but a resend is a new request, even under a transactionID seen before: a
        # same-key renewal repeats the enrollment's ID (clients derive it from the key).

        renewed, refusal = self._requester_certificate(message)
        if refusal:
            return Outcome.failure(refusal)
        if message.message_type is MessageType.RENEWAL_REQ and renewed is None:
            return Outcome.refuse(
                ErrorCode.RENEWAL_SIGNER_UNKNOWN,
                "a RenewalReq must be signed by a valid certificate this CA issued; this one is signed by "
                f"'{message.signer_certificate.subject.rfc4514_string()}'",
            )
        if renewed:
            details["renewal_of"] = renewed.serial
        try:
            with self.store.unit_of_work() as uow:
                verdict = None
                if renewed is None:
                    # The challenge first: it may name the template (an MDM challenge can).
                    verdict = self._verdict(message, csr, uow, details)
                template = self._qualifying_template(csr, verdict, details)
                if renewed is not None:
                    template = self._renewal_template(message, csr, renewed, template, uow, details)
                key_digest = public_key_sha256(csr.public_key)
                record = TransactionRecord(
                    transaction_id=message.transaction_id,
                    message_type=message.message_type.name,
                    status="pending" if template.approval == "manual" else "issued",
                    subject=csr.subject.rfc4514_string(),
                    template=template.name,
                    public_key_sha256=key_digest,
                    signer_key_sha256=public_key_sha256(message.signer_certificate.public_key()),
                    csr_der=stored_csr,
                    renewal_of=renewed.serial if renewed else None,
                    client=client,
                    request_sha256=fingerprint,
                )
                if template.approval == "manual":
                    uow.add_transaction(record)
                    return Outcome.pending()
                cert = self.issue_in(uow, record, csr, template)
        except _Stop as stop:
            # Raised inside the unit of work so that it rolls back: a refused request spends
            # no one-time password and no challenge.
            return stop.outcome
        except IntegrityError:
            # The same request was committed meanwhile (a resend racing the original,
            # perhaps on another server): answer with what was stored.
            resent = self._stored_request(message.transaction_id, fingerprint)
            if resent is None:
                raise
            return self._status_of(resent)
        if renewed and template.revoke_on_renewal:
            try:
                self.publish_crl(renewed.issuer_key_id)
            except StoreUnavailable as exc:
                # The certificate is recorded and the old one revoked: the client gets its
                # certificate; the CRL is re-signed at the next revocation, or once half its lifetime is past.
                log.warning("CRL not re-signed after renewing %s: %s", renewed.serial, exc.reason)
        return Outcome.success(cert)

    def _stored_request(self, transaction_id: str, fingerprint: str) -> TransactionRecord | None:
        """The stored request this one resends, if it is one."""
        return next((r for r in self.store.find_requests(transaction_id) if r.request_sha256 == fingerprint), None)

    def _verdict(self, message: PkiMessage, csr: CertificationRequest, uow: UnitOfWork, details: dict):
        """The registration point's verdict; _Stop with its refusal when it does not accept."""
        verdict = self.validator.verify(ChallengeRequest(message.transaction_id, csr.challenge_password, csr), uow)
        details["validator"] = verdict.validator
        if not verdict.accepted:
            raise _Stop(Outcome.failure(verdict.refusal))
        return verdict

    def _policy_refusal(self, message: PkiMessage, csr: CertificationRequest) -> Refusal | None:
        """What no template may allow: MD5 signatures (unless the policy allows them), and
        subjects that could pass for something else (control characters; our own names)."""
        if not self.allow_md5:
            if message.digest_algorithm == "md5":
                return Refusal(ErrorCode.ALGORITHM_REFUSED, "the pkiMessage is signed with MD5 ([scep] allow_md5 = false)")
            if csr.signature_hash == "md5":
                return Refusal(ErrorCode.ALGORITHM_REFUSED, "the PKCS#10 request is signed with MD5 ([scep] allow_md5 = false)")
        values = [attribute.value for attribute in csr.subject]
        values += [n.value for n in csr.subject_alternative_names if isinstance(n.value, str)]
        for value in values:
            if isinstance(value, str) and any(_is_control(ch) for ch in value):
                return Refusal(ErrorCode.SUBJECT_INVALID, f"the request names {value!r}, which holds control characters")
        if len(csr.subject) and csr.subject in self._own_names:
            return Refusal(
                ErrorCode.SUBJECT_INVALID,
                f"the request asks for '{csr.subject.rfc4514_string()}', the name of this server's own CA or RA",
            )
        return None

    def _qualifying_template(self, csr, verdict, details) -> Template:
        """The template for this request (the challenge's, else NDES's mapping), once the
        request qualifies for it; otherwise _Stop with the refusal."""
        if verdict is not None and verdict.template:
            selection, template = f"challenge={verdict.template}", self.templates.get(verdict.template)
        else:
            selection, template = self.template_for(csr)
        details["template"] = selection
        if template is None:
            raise _Stop(Outcome.refuse(ErrorCode.TEMPLATE_MISSING, f"{selection} names no template"))
        if self.issuer_for(template) is None:
            raise _Stop(Outcome.refuse(ErrorCode.TEMPLATE_MISSING, f"template {template.name} names CA {template.ca}, which is not configured"))
        refusal = template.check(csr)
        if refusal:
            raise _Stop(Outcome.failure(refusal))
        return template

    def _renewal_template(self, message, csr, old: CertificateRecord, template: Template, uow, details) -> Template:
        """A renewal, authenticated by the certificate it renews, gets no more than that
        certificate holds; whatever it asks for beyond that is the registration point's to
        allow, as for a first enrollment. Returns the template to issue from; _Stop when the
        renewal is refused."""
        refusal = self._renewal_refusal(old, template)
        if refusal:
            raise _Stop(Outcome.failure(refusal))
        old_cert = x509.load_der_x509_certificate(old.der)
        wider = widened_identity(old_cert, old.template, csr, template)
        if not wider:
            return template
        details["renewal_widens"] = "; ".join(wider)
        if csr.challenge_password is None:
            if wider == ["subject"]:
                raise _Stop(Outcome.refuse(
                    ErrorCode.RENEWAL_SUBJECT_MISMATCH,
                    f"the request asks for '{csr.subject.rfc4514_string()}' but renews "
                    f"'{old_cert.subject.rfc4514_string()}'",
                ))
            raise _Stop(Outcome.refuse(
                ErrorCode.RENEWAL_WIDENS_IDENTITY,
                f"the renewal of {old.serial} asks for more than it holds ({'; '.join(wider)}) and carries no challenge",
            ))
        verdict = self._verdict(message, csr, uow, details)
        return self._qualifying_template(csr, verdict, details) if verdict.template else template

    def issue_in(self, uow: UnitOfWork, record: TransactionRecord, csr: CertificationRequest, template: Template) -> x509.Certificate:
        """Sign and record a certificate for `record` inside the caller's unit of work: the
        certificate exists only if the record commits. Pending records are decided instead."""
        ca = self.issuer_for(template)
        if ca is None:
            raise ValueError(f"template {template.name} names CA {template.ca!r}, which is not configured")
        cert = ca.issue(csr, template)
        serial = format(cert.serial_number, "x")
        uow.add_certificate(
            CertificateRecord(
                serial=serial,
                issuer_key_id=ca.key_id,
                subject=cert.subject.rfc4514_string(),
                template=template.name,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                sha256=cms.certificate_sha256(cert),
                der=cert.public_bytes(Encoding.DER),
                transaction_id=record.transaction_id,
                renewal_of=record.renewal_of,
            )
        )
        if record.status == "pending":
            if not uow.decide_pending(record.transaction_id, "issued", serial=serial):
                raise ValueError(f"request {record.transaction_id} is no longer pending")
        else:
            uow.add_transaction(dataclasses.replace(record, certificate_serial=serial))
        if record.renewal_of and template.revoke_on_renewal:
            uow.revoke(record.renewal_of, "superseded")
        uow.add_notification("success", record.transaction_id, {
            "transactionId": record.transaction_id,
            # As stored: without the challengePassword, which webhooks have no use for.
            "certificateRequest": base64.b64encode(record.csr_der).decode("ascii"),
            "certificateThumbprint": cert.fingerprint(hashes.SHA1()).hex().upper(),
            "certificateSerialNumber": serial,
            "certificateExpirationDateUtc": cert.not_valid_after_utc.isoformat(),
            "issuingCertificateAuthority": ca.certificate.subject.rfc4514_string(),
            "subject": cert.subject.rfc4514_string(),
            "template": template.name,
            "callerInfo": "scepd",
        }, self.notify.get("success", ()))
        return cert

    def publish_crl(self, issuer_key_id: str) -> None:
        ca = self.ca_for_key_id(issuer_key_id)
        if ca is not None:
            self.crls.issue(ca)

    def _renewal_refusal(self, old: CertificateRecord, template: Template) -> Refusal | None:
        if not template.renewal:
            return Refusal(ErrorCode.RENEWAL_NOT_ALLOWED, f"template {template.name} does not allow renewal")
        if template.renewal_window_days:
            opens = old.not_after - dt.timedelta(days=template.renewal_window_days)
            if _now() < opens:
                return Refusal(
                    ErrorCode.RENEWAL_TOO_EARLY,
                    f"certificate {old.serial} can be renewed from {opens:%Y-%m-%d} "
                    f"({template.renewal_window_days} days before it expires)",
                )
        return None

    @staticmethod
    def _status_of(record: TransactionRecord) -> Outcome:
        """The answer a stored request gives to its resend or poll. A certificate that has
        been revoked or has expired since is never handed out as a SUCCESS."""
        if record.status == "issued":
            if record.certificate_status == "revoked":
                return Outcome.refuse(
                    ErrorCode.ISSUED_CERTIFICATE_REVOKED,
                    f"the certificate {record.certificate_serial} issued for this request was revoked",
                )
            if record.certificate_not_after is not None and record.certificate_not_after <= _now():
                return Outcome.refuse(
                    ErrorCode.ISSUED_CERTIFICATE_EXPIRED,
                    f"the certificate {record.certificate_serial} issued for this request expired on "
                    f"{record.certificate_not_after:%Y-%m-%d}",
                )
            return Outcome.success(x509.load_der_x509_certificate(record.certificate_der))
        if record.status == "denied":
            return Outcome.refuse(ErrorCode.REQUEST_DENIED, record.reason or "denied by an administrator")
        return Outcome.pending()

    # --- CertPoll, GetCert, GetCRL ---------------------------------------------------------

    def _poll(self, message: PkiMessage) -> Outcome:
        requests = self.store.find_requests(message.transaction_id)
        if not requests:
            return Outcome.refuse(ErrorCode.TRANSACTION_UNKNOWN, f"no request has transactionID {message.transaction_id}")
        # Several requests may share the ID (a same-key renewal); a poll asks about the newest
        # one its signer made, and about nobody else's.
        signer = public_key_sha256(message.signer_certificate.public_key())
        mine = next((r for r in requests if r.signer_key_sha256 == signer), None)
        if mine is None:
            return Outcome.refuse(
                ErrorCode.POLL_SIGNER_MISMATCH, "the CertPoll is signed by another key than the request it asks about"
            )
        return self._status_of(mine)

    def _retrieve(self, message: PkiMessage, issuer_der: bytes, serial: int) -> Outcome:
        requester, refusal = self._requester_certificate(message)
        if refusal:
            return Outcome.failure(refusal)
        if requester is None:
            return Outcome.refuse(
                ErrorCode.REQUESTER_NOT_AUTHORIZED,
                f"{message.message_type.name} must be signed by a valid certificate this CA issued",
            )
        record = self.store.find_certificate(format(serial, "x"))
        ca = self.ca_for_key_id(record.issuer_key_id) if record else None
        if record is None or ca is None or ca.certificate.subject.public_bytes() != issuer_der:
            return Outcome.refuse(ErrorCode.CERTIFICATE_UNKNOWN, f"this CA issued no certificate with serial {serial:x}")
        if message.message_type is MessageType.GET_CRL:
            return Outcome(CertRepReply(PkiStatus.SUCCESS, crls=(self.crls.current(ca),)))
        if record.status == "revoked":
            return Outcome.refuse(ErrorCode.ISSUED_CERTIFICATE_REVOKED, f"certificate {record.serial} was revoked")
        if record.not_after <= _now():
            return Outcome.refuse(ErrorCode.ISSUED_CERTIFICATE_EXPIRED, f"certificate {record.serial} expired on {record.not_after:%Y-%m-%d}")
        return Outcome.success(x509.load_der_x509_certificate(record.der))

    # --- administrator decisions ---------------------------------------------------------

    def approve(self, transaction_id: str) -> x509.Certificate:
        """Issue the certificate of a pending request (`scepd requests approve`)."""
        record = self._pending(transaction_id)
        template = self.templates.get(record.template)
        if template is None:
            raise ValueError(f"the request's template {record.template!r} no longer exists")
        csr = parse_csr(record.csr_der, verified=True)  # checked on arrival, stored without its challenge
        with self.store.unit_of_work() as uow:
            cert = self.issue_in(uow, record, csr, template)
        if record.renewal_of and template.revoke_on_renewal:
            old = self.store.find_certificate(record.renewal_of)
            if old:
                self.publish_crl(old.issuer_key_id)
        return cert

    def deny(self, transaction_id: str, reason: str) -> None:
        self._pending(transaction_id)
        with self.store.unit_of_work() as uow:
            if not uow.decide_pending(transaction_id, "denied", reason=reason):
                raise ValueError(f"request {transaction_id} is no longer pending")

    def _pending(self, transaction_id: str) -> TransactionRecord:
        record = self.store.find_transaction(transaction_id)
        if record is None:
            raise KeyError(f"no request with transaction ID {transaction_id}")
        if record.status != "pending":
            raise ValueError(f"request {transaction_id} is {record.status}, not pending")
        return record

    def revoke(self, serial: str, reason: str, with_renewals: bool = False) -> tuple[CertificateRecord, ...]:
        """Revoke a certificate and, `with_renewals`, every certificate renewed from it and from
        those (`scepd certs revoke`), in one database transaction; then sign the CRL of each CA
        concerned once. Returns what was revoked, as now recorded: the certificate, then its
        renewals oldest first, leaving out those revoked before (a certificate superseded by its
        renewal is revoked already, its renewals are not). KeyError for an unknown serial,
        ValueError for an unknown reason or when nothing is left to revoke."""
        if reason not in REVOCATION_REASONS:
            raise ValueError(f"unknown reason {reason!r}; one of {', '.join(REVOCATION_REASONS)}")
        record = self.store.find_certificate(serial)
        if record is None:
            raise KeyError(f"no certificate with serial {serial}")
        chain = [record, *(self.store.renewals_of(record.serial) if with_renewals else ())]
        valid = [r for r in chain if r.status == "valid"]
        issuers = {}
        for r in valid:
            # Checked before anything is revoked: a revocation no CRL can list must not happen.
            ca = self.ca_for_key_id(r.issuer_key_id)
            if ca is None:
                raise ValueError(f"the issuer of {r.serial} is no longer configured; its CRL cannot be signed")
            issuers[r.issuer_key_id] = ca
        at = _now()
        with self.store.unit_of_work() as uow:
            # uow.revoke is conditional: one revoked meanwhile (another administrator) is skipped.
            revoked = tuple(dataclasses.replace(r, status="revoked", revoked_at=at, revocation_reason=reason)
                            for r in valid if uow.revoke(r.serial, reason, at))
        if not revoked:
            raise ValueError(f"certificate {serial} is already revoked" + (", and so are its renewals" if len(chain) > 1 else ""))
        for key_id in dict.fromkeys(r.issuer_key_id for r in revoked):
            self.crls.issue(issuers[key_id])
        return revoked
