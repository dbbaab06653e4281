"""pkiMessage: the SignedData every SCEP PKIOperation carries, in both directions.

`parse_pki_message` reads a request or a reply and returns its SCEP attributes typed;
`build_pki_message` writes one (a client's request, or the server's CertRep). A server
answers a request's `Exchange` (what `requests.open_request` read of it) with
`build_cert_rep`. The encrypted inner part (pkcsPKIEnvelope) is opened and sealed with
`scepd.protocol.enveloped`; what CertPoll, GetCert and GetCRL carry in it is read here.
May import: asn1crypto, cryptography and scepd.protocol's ber, enveloped, errors, signed, types.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
from dataclasses import dataclass

from asn1crypto import cms as cms_asn1
from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509

from scepd.protocol import ber, enveloped, signed
from scepd.protocol.errors import ErrorCode, ProtocolError, undecodable
from scepd.protocol.types import FailInfo, MessageType, PkiStatus

MAX_TRANSACTION_ID_LENGTH = 128


@dataclass(frozen=True)
class PkiMessage:
    message_type: MessageType
    transaction_id: str
    sender_nonce: bytes | None
    recipient_nonce: bytes | None
    pki_status: PkiStatus | None
    fail_info: FailInfo | None
    fail_info_text: str | None
    digest_algorithm: str
    signer_certificate: x509.Certificate | None
    certificates: tuple[x509.Certificate, ...]
    envelope: bytes  # the pkcsPKIEnvelope (EnvelopedData DER), empty when absent
    signature_error: str | None
    other_attributes: dict[str, list]

    @property
    def is_verified(self) -> bool:
        return self.signature_error is None


_SCEP_KEYS = {
    "scep_message_type",
    "scep_pki_status",
    "scep_fail_info",
    "scep_fail_info_text",
    "scep_sender_nonce",
    "scep_recipient_nonce",
    "scep_transaction_id",
}


def parse_pki_message(der: bytes, known_certificates: tuple[x509.Certificate, ...] = ()) -> PkiMessage:
    """Parse a pkiMessage. The signature is checked and its outcome reported in
    `signature_error`; missing SCEP attributes are a ProtocolError (badRequest)."""
    message = signed.parse_signed_data(der, known_certificates)

    def required(name: str, label: str):
        value = message.attribute(name)
        if value is None:
            raise undecodable(f"the pkiMessage has no {label} attribute")
        return value

    raw_type = required("scep_message_type", "messageType")
    try:
        message_type = MessageType(raw_type.strip())
    except ValueError:
        raise ProtocolError(
            ErrorCode.MESSAGE_TYPE_UNSUPPORTED, f"messageType {raw_type!r} is not a SCEP message type"
        ) from None
    transaction_id = required("scep_transaction_id", "transactionID")
    if not transaction_id or len(transaction_id) > MAX_TRANSACTION_ID_LENGTH:
        raise undecodable(f"the transactionID must be 1 to {MAX_TRANSACTION_ID_LENGTH} characters")
    # Requests must carry a senderNonce; some servers (micromdm before 2017) omit it in replies.
    if message_type is MessageType.CERT_REP:
        sender_nonce = message.attribute("scep_sender_nonce")
    else:
        sender_nonce = required("scep_sender_nonce", "senderNonce")

    status = message.attribute("scep_pki_status")
    fail_info = message.attribute("scep_fail_info")
    try:
        pki_status = PkiStatus(status) if status is not None else None
        fail = FailInfo(fail_info) if fail_info is not None else None
    except ValueError:
        raise undecodable("the pkiStatus or failInfo attribute has an unknown value") from None

    return PkiMessage(
        message_type=message_type,
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        recipient_nonce=message.attribute("scep_recipient_nonce"),
        pki_status=pki_status,
        fail_info=fail,
        fail_info_text=message.attribute("scep_fail_info_text"),
        digest_algorithm=message.digest_algorithm,
        signer_certificate=message.signer_certificate,
        certificates=message.certificates,
        envelope=message.content,
        signature_error=message.signature_error,
        other_attributes={k: v for k, v in message.signed_attributes.items() if k not in _SCEP_KEYS},
    )


def new_nonce() -> bytes:
    return os.urandom(16)


def build_pki_message(
    *,
    message_type: MessageType,
    transaction_id: str,
    signer_certificate: x509.Certificate,
    signer_key,
    digest_algorithm: str,
    envelope: bytes = b"",
    sender_nonce: bytes | None = None,
    recipient_nonce: bytes | None = None,
    pki_status: PkiStatus | None = None,
    fail_info: FailInfo | None = None,
    fail_info_text: str | None = None,
    signing_time: dt.datetime | None = None,
) -> bytes:
    attributes: list[tuple[str, object]] = [
        ("scep_message_type", message_type.value),
        ("scep_transaction_id", transaction_id),
        ("scep_sender_nonce", sender_nonce or new_nonce()),
    ]
    if recipient_nonce is not None:
        attributes.append(("scep_recipient_nonce", recipient_nonce))
    if pki_status is not None:
        attributes.append(("scep_pki_status", pki_status.value))
    if fail_info is not None:
        attributes.append(("scep_fail_info", fail_info.value))
    if fail_info_text:
        attributes.append(("scep_fail_info_text", fail_info_text))
    return signed.build_signed_data(
        envelope, signer_certificate, signer_key, digest_algorithm, attributes, signing_time=signing_time
    )


@dataclass(frozen=True)
class CertRepReply:
    """What a CertRep answers to one request (the server's side of the exchange)."""

    status: PkiStatus
    certificates: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()  # GetCRL's answer
    fail_info: FailInfo | None = None
    fail_info_text: str | None = None


class Weakness(enum.StrEnum):
    """What a request was accepted with although it is weak, for the caller to log."""

    SINGLE_DES = "single DES"


@dataclass(frozen=True)
class Exchange:
    """One request's side of a PKIOperation: what its CertRep needs (the transactionID, the
    senderNonce it mirrors, the digest it is signed with, the signer it is encrypted to, the
    cipher and key transport it is sealed with) and what it was accepted with.

    `signer` is None when the message names a certificate it does not carry; `cipher` and
    `key_transport` are None until the envelope is opened (and `key_transport` stays None
    when the content key was agreed by ECDH: a reply to an RSA certificate then uses PKCS #1
    v1.5)."""

    message_type: MessageType
    transaction_id: str
    sender_nonce: bytes | None
    digest_algorithm: str
    signer: x509.Certificate | None
    cipher: enveloped.ContentCipher | None = None
    key_transport: enveloped.KeyTransport | None = None
    weak: frozenset[Weakness] = frozenset()


def build_cert_rep(
    exchange: Exchange,
    reply: CertRepReply,
    *,
    signer_certificate: x509.Certificate,
    signer_key,
    now: dt.datetime | None = None,
) -> bytes:
    """The CertRep of `exchange`: same transactionID, recipientNonce = its senderNonce, signed
    with its digest algorithm (SHA-256 for one we do not sign with), signingTime `now` (None:
    the system clock). On SUCCESS the certificates (issued one first) in a certs-only
    SignedData encrypted to the signer the way the request was (never downgraded; AES-128-CBC
    when the request was not opened): by RSA key transport to an RSA signer, by ECDH key
    agreement to an EC one."""
    envelope = b""
    if reply.status is PkiStatus.SUCCESS:
        if exchange.signer is None:
            raise ProtocolError(ErrorCode.MESSAGE_SIGNER_UNKNOWN, "no certificate to encrypt to")
        inner = signed.build_certs_only(list(reply.certificates), list(reply.crls))
        cipher = exchange.cipher or enveloped.ContentCipher.AES_128_CBC
        envelope = enveloped.build_enveloped(inner, exchange.signer, cipher, exchange.key_transport)
    failed = reply.status is PkiStatus.FAILURE
    return build_pki_message(
        message_type=MessageType.CERT_REP,
        transaction_id=exchange.transaction_id,
        signer_certificate=signer_certificate,
        signer_key=signer_key,
        digest_algorithm=exchange.digest_algorithm if exchange.digest_algorithm in _REPLY_DIGESTS else "sha256",
        envelope=envelope,
        recipient_nonce=exchange.sender_nonce,
        pki_status=reply.status,
        fail_info=reply.fail_info if failed else None,
        fail_info_text=reply.fail_info_text if failed else None,
        signing_time=now,
    )


# We answer in the requester's digest when it is one we sign with; MD5 never.
_REPLY_DIGESTS = {"sha1", "sha224", "sha256", "sha384", "sha512"}


# --- what CertPoll, GetCert and GetCRL carry inside their envelope ------------------------


class _IssuerAndSubject(core.Sequence):
    """RFC 8894 section 3.3.3: the content of a CertPoll (asn1crypto does not define it)."""

    _fields = [("issuer", asn1_x509.Name), ("subject", asn1_x509.Name)]


def encode_issuer_and_serial(issuer: x509.Name, serial: int) -> bytes:
    return cms_asn1.IssuerAndSerialNumber(
        {"issuer": asn1_x509.Name.load(issuer.public_bytes()), "serial_number": serial}
    ).dump()


def decode_issuer_and_serial(der: bytes) -> tuple[bytes, int]:
    """(issuer Name as DER, serial) of a GetCert or GetCRL request."""

    def read(data: bytes) -> tuple[bytes, int]:
        value = cms_asn1.IssuerAndSerialNumber.load(data)
        return value["issuer"].dump(force=True), value["serial_number"].native

    return ber.read_ber(der, "the content is not an IssuerAndSerialNumber", read)


def encode_issuer_and_subject(issuer: x509.Name, subject: x509.Name) -> bytes:
    return _IssuerAndSubject(
        {"issuer": asn1_x509.Name.load(issuer.public_bytes()), "subject": asn1_x509.Name.load(subject.public_bytes())}
    ).dump()


def decode_issuer_and_subject(der: bytes) -> tuple[bytes, bytes]:
    """(issuer, subject) Names as DER of a CertPoll."""

    def read(data: bytes) -> tuple[bytes, bytes]:
        value = _IssuerAndSubject.load(data)
        return value["issuer"].dump(force=True), value["subject"].dump(force=True)

    return ber.read_ber(der, "the content is not an IssuerAndSubject", read)
