"""A PKIOperation's request, opened: bytes in, one typed request (or a refusal) out.

`open_request` does everything the protocol can decide before a service does: it parses the
pkiMessage, identifies its signer and checks the signature and signingTime, applies the
algorithm policy, opens the envelope and reads what it carries (a PKCS#10 request with its
proof of possession checked, an IssuerAndSubject, an IssuerAndSerialNumber). What needs our
records or our CA's names (who the signer is to us, which subjects are ours) is the
service's. No I/O and no clock: the time is an argument. The reply is written from the
request's `Exchange` with `scepd.protocol.message.build_cert_rep`.
May import: cryptography and scepd.protocol's csr, enveloped, errors, message, types.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from scepd.protocol import enveloped
from scepd.protocol.csr import CertificationRequest, parse_csr
from scepd.protocol.errors import ErrorCode, ProtocolError, Refusal, refusal_from_protocol
from scepd.protocol.message import (
    Exchange,
    PkiMessage,
    Weakness,
    decode_issuer_and_serial,
    decode_issuer_and_subject,
    parse_pki_message,
)
from scepd.protocol.types import MessageType


@dataclass(frozen=True)
class RequestPolicy:
    """What the server accepts of a request's algorithms and clock ([scep] in scepd.toml)."""

    max_clock_skew: dt.timedelta
    allow_md5: bool
    allow_des: bool


@dataclass(frozen=True)
class PkcsReq:
    exchange: Exchange
    csr: CertificationRequest


@dataclass(frozen=True)
class RenewalReq:
    exchange: Exchange
    csr: CertificationRequest


@dataclass(frozen=True)
class CertPoll:
    exchange: Exchange
    issuer: bytes  # Name DER, as sent
    subject: bytes  # Name DER, as sent


@dataclass(frozen=True)
class GetCert:
    exchange: Exchange
    issuer: bytes  # Name DER, as sent
    serial: int


@dataclass(frozen=True)
class GetCrl:
    exchange: Exchange
    issuer: bytes  # Name DER, as sent
    serial: int


@dataclass(frozen=True)
class Refused:
    """A request the protocol refuses. With an `exchange` it is answered by a CertRep FAILURE;
    without one (the message is too broken to address a reply to) by an HTTP 400."""

    refusal: Refusal
    exchange: Exchange | None = None


Request = PkcsReq | RenewalReq | CertPoll | GetCert | GetCrl


def open_request(
    der: bytes,
    *,
    recipients: list[tuple[x509.Certificate, object]],
    known: tuple[x509.Certificate, ...],
    policy: RequestPolicy,
    now: dt.datetime,
) -> Request | Refused:
    """The request `der` carries. `recipients`: our (certificate, private key) pairs the
    envelope may be addressed to; `known`: certificates a signer may be named from without
    the message carrying it (our CA and RA); `now`: an aware datetime, what the signingTime
    is held against. Refuses, never raises, for anything a peer can send."""
    try:
        message = parse_pki_message(der, known)
    except ProtocolError as exc:
        return Refused(refusal_from_protocol(exc))
    refusal = _signature_refusal(message, policy, now)
    if refusal is not None:
        return Refused(refusal, _exchange(message))
    try:
        decrypted = enveloped.decrypt_enveloped(message.envelope, recipients)
    except ProtocolError as exc:
        return Refused(refusal_from_protocol(exc), _exchange(message))
    single_des = decrypted.cipher is enveloped.ContentCipher.DES_CBC
    if single_des and not policy.allow_des:
        refusal = Refusal(ErrorCode.ALGORITHM_REFUSED,
                          "the request is encrypted with single DES ([scep] allow_des = false)")
        return Refused(refusal, _exchange(message, decrypted))
    # Single DES is accepted (Go clients and older network gear offer nothing else), but an
    # administrator should know which clients still use it.
    exchange = _exchange(message, decrypted, _SINGLE_DES if single_des else frozenset())
    try:
        return _typed(exchange, decrypted.content, policy)
    except ProtocolError as exc:
        return Refused(refusal_from_protocol(exc), exchange)


def _exchange(message: PkiMessage, decrypted: enveloped.Decrypted | None = None,
              weak: frozenset[Weakness] = frozenset()) -> Exchange:
    """What the reply to `message` needs; its cipher once the envelope is `decrypted`."""
    if decrypted is None:
        return Exchange(message.message_type, message.transaction_id, message.sender_nonce,
                        message.digest_algorithm, message.signer_certificate)
    return Exchange(message.message_type, message.transaction_id, message.sender_nonce, message.digest_algorithm,
                    message.signer_certificate, decrypted.cipher, decrypted.key_transport, weak)


_SINGLE_DES = frozenset({Weakness.SINGLE_DES})


def _signature_refusal(message: PkiMessage, policy: RequestPolicy, now: dt.datetime) -> Refusal | None:
    """Why the pkiMessage's signature cannot be accepted: no signer, a signature that does not
    verify, a signingTime too far from `now`, MD5 unless the policy allows it."""
    if message.signer_certificate is None:
        return Refusal(ErrorCode.MESSAGE_SIGNER_UNKNOWN, message.signature_error or "no signer certificate")
    if message.signature_error:
        return Refusal(ErrorCode.MESSAGE_SIGNATURE_INVALID, message.signature_error)
    signing_time = (message.other_attributes.get("signing_time") or [None])[0]
    if isinstance(signing_time, dt.datetime):
        drift = abs(now - signing_time)
        if drift > policy.max_clock_skew:
            return Refusal(
                ErrorCode.MESSAGE_TIME_INVALID,
                f"the message was signed at {signing_time:%Y-%m-%d %H:%M:%S}Z, "
                f"{int(drift.total_seconds())} s from the server's clock",
            )
    if message.digest_algorithm == "md5" and not policy.allow_md5:
        return Refusal(ErrorCode.ALGORITHM_REFUSED, "the pkiMessage is signed with MD5 ([scep] allow_md5 = false)")
    return None


def _typed(exchange: Exchange, content: bytes, policy: RequestPolicy) -> Request | Refused:
    """The request of `exchange`'s message type, its `content` read."""
    kind = exchange.message_type
    if kind is MessageType.PKCS_REQ:
        return PkcsReq(exchange, _csr(content, policy))
    if kind is MessageType.RENEWAL_REQ:
        return RenewalReq(exchange, _csr(content, policy))
    if kind is MessageType.CERT_POLL:
        return CertPoll(exchange, *decode_issuer_and_subject(content))
    if kind is MessageType.GET_CERT:
        return GetCert(exchange, *decode_issuer_and_serial(content))
    if kind is MessageType.GET_CRL:
        return GetCrl(exchange, *decode_issuer_and_serial(content))
    return Refused(Refusal(ErrorCode.MESSAGE_TYPE_UNSUPPORTED, f"{kind.name} is not a request"), exchange)


def _csr(content: bytes, policy: RequestPolicy) -> CertificationRequest:
    csr = parse_csr(content)
    if csr.signature_hash == "md5" and not policy.allow_md5:
        raise ProtocolError(ErrorCode.ALGORITHM_REFUSED,
                            "the PKCS#10 request is signed with MD5 ([scep] allow_md5 = false)")
    return csr
