"""open_request: a pkiMessage's bytes become one typed request or a named refusal, and
build_cert_rep answers the request's exchange. No HTTP, no store, the time fixed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from conftest import name
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.protocol import FailInfo, MessageType, PkiStatus, enveloped, signed
from scepd.protocol.errors import ErrorCode
from scepd.protocol.message import (
    CertRepReply,
    Exchange,
    Weakness,
    build_cert_rep,
    build_pki_message,
    encode_issuer_and_serial,
    encode_issuer_and_subject,
    parse_pki_message,
)
from scepd.protocol.requests import (
    CertPoll,
    GetCert,
    GetCrl,
    PkcsReq,
    Refused,
    RenewalReq,
    RequestPolicy,
    open_request,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
POLICY = RequestPolicy(max_clock_skew=dt.timedelta(minutes=10), allow_md5=False, allow_des=True)


def _certificate(key, cn: str, *, ca: bool = False) -> x509.Certificate:
    return (
        x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def ra():
    key = rsa.generate_private_key(65537, 2048)
    return _certificate(key, "test RA"), key


@pytest.fixture(scope="module")
def ca():
    key = rsa.generate_private_key(65537, 2048)
    return _certificate(key, "test CA", ca=True), key


@pytest.fixture(scope="module")
def device():
    key = rsa.generate_private_key(65537, 2048)
    return _certificate(key, "device"), key


def _csr(key, cn: str = "device") -> bytes:
    return x509.CertificateSigningRequestBuilder().subject_name(name(cn)).sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def _message(ra, signer, content: bytes, *, message_type=MessageType.PKCS_REQ, cipher=enveloped.ContentCipher.AES_128_CBC,
             digest="sha256", signing_time=NOW, transport=None, transaction_id="TX-1") -> bytes:
    cert, key = signer
    return build_pki_message(
        message_type=message_type, transaction_id=transaction_id, signer_certificate=cert, signer_key=key,
        digest_algorithm=digest, envelope=enveloped.build_enveloped(content, ra[0], cipher, transport),
        sender_nonce=b"nonce-0123456789", signing_time=signing_time,
    )


def _open(der: bytes, ra, *, known=(), policy=POLICY, now=NOW, recipients=None):
    return open_request(der, recipients=recipients or [ra], known=known, policy=policy, now=now)


def _refusal_of(opened, code: ErrorCode, *, addressed: bool = True):
    assert isinstance(opened, Refused), opened
    assert opened.refusal.code is code, opened.refusal
    assert (opened.exchange is not None) is addressed
    return opened


# --- each request type -------------------------------------------------------------------------


def test_pkcsreq_is_opened_with_everything_its_reply_needs(ra, device):
    opened = _open(_message(ra, device, _csr(device[1]), digest="sha512"), ra)
    assert isinstance(opened, PkcsReq)
    assert opened.csr.subject == name("device")
    assert opened.exchange == Exchange(
        message_type=MessageType.PKCS_REQ, transaction_id="TX-1", sender_nonce=b"nonce-0123456789",
        digest_algorithm="sha512", signer=device[0], cipher=enveloped.ContentCipher.AES_128_CBC,
        key_transport=enveloped.PKCS1V15, weak=frozenset(),
    )


def test_renewalreq_is_its_own_type(ra, device):
    opened = _open(_message(ra, device, _csr(device[1]), message_type=MessageType.RENEWAL_REQ), ra)
    assert isinstance(opened, RenewalReq) and not isinstance(opened, PkcsReq)
    assert opened.csr.public_key.public_numbers() == device[1].public_key().public_numbers()
    assert opened.exchange.message_type is MessageType.RENEWAL_REQ


def test_certpoll_carries_issuer_and_subject(ra, ca, device):
    content = encode_issuer_and_subject(ca[0].subject, name("device"))
    opened = _open(_message(ra, device, content, message_type=MessageType.CERT_POLL), ra)
    assert isinstance(opened, CertPoll)
    assert (opened.issuer, opened.subject) == (ca[0].subject.public_bytes(), name("device").public_bytes())


@pytest.mark.parametrize("message_type,kind", [(MessageType.GET_CERT, GetCert), (MessageType.GET_CRL, GetCrl)])
def test_getcert_and_getcrl_carry_issuer_and_serial(ra, ca, device, message_type, kind):
    content = encode_issuer_and_serial(ca[0].subject, 0x1234ABCD)
    opened = _open(_message(ra, device, content, message_type=message_type), ra)
    assert type(opened) is kind
    assert (opened.issuer, opened.serial) == (ca[0].subject.public_bytes(), 0x1234ABCD)
    assert opened.exchange.message_type is message_type


def test_a_signer_the_message_does_not_carry_is_found_among_the_known(ra, device):
    value = asn1_cms.ContentInfo.load(_message(ra, device, _csr(device[1])))
    del value["content"]["certificates"]  # outside the signature: it still verifies
    bare = value.dump(force=True)
    _refusal_of(_open(bare, ra), ErrorCode.MESSAGE_SIGNER_UNKNOWN)
    assert isinstance(_open(bare, ra, known=(device[0],)), PkcsReq)


def test_an_envelope_to_an_rsa_ca_among_the_recipients_opens(ra, ca, device):
    der = build_pki_message(
        message_type=MessageType.PKCS_REQ, transaction_id="TO-CA", signer_certificate=device[0], signer_key=device[1],
        digest_algorithm="sha256", envelope=enveloped.build_enveloped(_csr(device[1]), ca[0], enveloped.ContentCipher.AES_256_CBC),
        signing_time=NOW,
    )
    opened = _open(der, ra, recipients=[ra, ca])
    assert isinstance(opened, PkcsReq) and opened.exchange.cipher is enveloped.ContentCipher.AES_256_CBC


# --- refusals that cannot be answered with a CertRep ------------------------------------------


@pytest.mark.parametrize("der", [b"", b"not asn1 at all", b"\x30\x03\x02\x01", b"\x30\x80" + b"\x00" * 10])
def test_garbage_is_refused_without_an_exchange(ra, der):
    opened = _refusal_of(_open(der, ra), ErrorCode.MESSAGE_UNDECODABLE, addressed=False)
    assert opened.refusal.http_status == 400


def test_an_unknown_message_type_is_refused_without_an_exchange(ra, device):
    der = signed.build_signed_data(b"", device[0], device[1], "sha256", [
        ("scep_message_type", "99"), ("scep_transaction_id", "TX-99"), ("scep_sender_nonce", b"n" * 16),
    ], signing_time=NOW)
    _refusal_of(_open(der, ra), ErrorCode.MESSAGE_TYPE_UNSUPPORTED, addressed=False)


def test_a_message_without_a_transaction_id_is_refused_without_an_exchange(ra, device):
    der = signed.build_signed_data(b"", device[0], device[1], "sha256", [
        ("scep_message_type", "19"), ("scep_sender_nonce", b"n" * 16),
    ], signing_time=NOW)
    opened = _refusal_of(_open(der, ra), ErrorCode.MESSAGE_UNDECODABLE, addressed=False)
    assert "transactionID" in opened.refusal.reason


# --- refusals answered with a CertRep FAILURE -----------------------------------------------


def test_a_tampered_message_is_refused_with_its_exchange(ra, device):
    der = bytearray(_message(ra, device, _csr(device[1])))
    der[-300] ^= 1  # inside the envelope, which the messageDigest covers
    opened = _refusal_of(_open(bytes(der), ra), ErrorCode.MESSAGE_SIGNATURE_INVALID)
    assert opened.refusal.fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert (opened.exchange.transaction_id, opened.exchange.signer) == ("TX-1", device[0])
    assert opened.exchange.cipher is None  # not opened


@pytest.mark.parametrize("offset,accepted", [
    (dt.timedelta(minutes=-9), True), (dt.timedelta(minutes=9), True),
    (dt.timedelta(minutes=-11), False), (dt.timedelta(minutes=11), False),
])
def test_the_signing_time_is_held_against_now(ra, device, offset, accepted):
    opened = _open(_message(ra, device, _csr(device[1]), signing_time=NOW + offset), ra)
    if accepted:
        assert isinstance(opened, PkcsReq)
    else:
        _refusal_of(opened, ErrorCode.MESSAGE_TIME_INVALID)
        assert opened.refusal.fail_info is FailInfo.BAD_TIME and "660 s" in opened.refusal.reason


def test_the_same_message_is_judged_by_the_now_it_is_given(ra, device):
    der = _message(ra, device, _csr(device[1]))
    assert isinstance(_open(der, ra, now=NOW), PkcsReq)
    _refusal_of(_open(der, ra, now=NOW + dt.timedelta(hours=1)), ErrorCode.MESSAGE_TIME_INVALID)


def test_an_envelope_for_someone_else_is_refused_with_its_exchange(ra, device):
    other_key = rsa.generate_private_key(65537, 2048)
    der = _message((_certificate(other_key, "other RA"), other_key), device, _csr(device[1]))
    opened = _refusal_of(_open(der, ra), ErrorCode.RECIPIENT_UNKNOWN)
    assert opened.exchange.transaction_id == "TX-1"


def test_an_envelope_that_does_not_decrypt_is_refused_with_its_exchange(ra, device):
    der = _message(ra, device, _csr(device[1]), cipher=enveloped.ContentCipher.AES_192_CBC)
    wrong = (ra[0], rsa.generate_private_key(65537, 2048))  # our certificate, another key
    _refusal_of(_open(der, ra, recipients=[wrong]), ErrorCode.DECRYPTION_FAILED)


def test_a_broken_csr_is_refused_with_the_opened_exchange(ra, device):
    opened = _refusal_of(_open(_message(ra, device, b"not a PKCS#10 request"), ra), ErrorCode.CSR_MALFORMED)
    assert opened.exchange.cipher is enveloped.ContentCipher.AES_128_CBC  # the FAILURE goes back the same way


def test_a_csr_without_proof_of_possession_is_refused(ra, device):
    request = asn1_csr.CertificationRequest.load(_csr(device[1]))
    request["certification_request_info"]["subject"] = asn1_x509.Name.build({"common_name": "someone else"})
    _refusal_of(_open(_message(ra, device, request.dump(force=True)), ra), ErrorCode.CSR_SIGNATURE_INVALID)


def test_a_broken_certpoll_content_is_refused_with_its_exchange(ra, device):
    opened = _open(_message(ra, device, b"\x30\x03\x02\x01\x01", message_type=MessageType.CERT_POLL), ra)
    _refusal_of(opened, ErrorCode.MESSAGE_UNDECODABLE)


def test_a_certrep_sent_as_a_request_is_refused(ra, device):
    opened = _open(_message(ra, device, b"", message_type=MessageType.CERT_REP), ra)
    _refusal_of(opened, ErrorCode.MESSAGE_TYPE_UNSUPPORTED)
    assert opened.refusal.reason == "CERT_REP is not a request"


# --- the algorithm policy --------------------------------------------------------------------


def test_an_md5_signed_message_is_refused_unless_allowed(ra, device):
    der = _message(ra, device, _csr(device[1]), digest="md5")
    opened = _refusal_of(_open(der, ra), ErrorCode.ALGORITHM_REFUSED)
    assert "pkiMessage" in opened.refusal.reason and opened.refusal.fail_info is FailInfo.BAD_ALG
    allowed = _open(der, ra, policy=dataclasses.replace(POLICY, allow_md5=True))
    assert isinstance(allowed, PkcsReq) and allowed.exchange.digest_algorithm == "md5"


def test_md5_applies_to_every_message_type(ra, ca, device):
    content = encode_issuer_and_serial(ca[0].subject, 7)
    _refusal_of(_open(_message(ra, device, content, message_type=MessageType.GET_CERT, digest="md5"), ra),
                ErrorCode.ALGORITHM_REFUSED)


def _md5_csr(key) -> bytes:
    """cryptography no longer signs with MD5: the request's info re-signed, as an old device's."""
    request = asn1_csr.CertificationRequest.load(_csr(key, "md5 device"))
    info = request["certification_request_info"].dump()
    request["signature_algorithm"] = {"algorithm": "md5_rsa"}
    request["signature"] = key.sign(info, padding.PKCS1v15(), hashes.MD5())
    return request.dump(force=True)


def test_an_md5_signed_csr_is_refused_unless_allowed(ra, device):
    der = _message(ra, device, _md5_csr(device[1]))
    opened = _refusal_of(_open(der, ra), ErrorCode.ALGORITHM_REFUSED)
    assert "PKCS#10" in opened.refusal.reason
    allowed = _open(der, ra, policy=dataclasses.replace(POLICY, allow_md5=True))
    assert isinstance(allowed, PkcsReq) and allowed.csr.signature_hash == "md5"


def test_single_des_is_accepted_as_weak_or_refused(ra, device):
    der = _message(ra, device, _csr(device[1]), cipher=enveloped.ContentCipher.DES_CBC)
    accepted = _open(der, ra)
    assert isinstance(accepted, PkcsReq)
    assert accepted.exchange.weak == frozenset({Weakness.SINGLE_DES}) and str(Weakness.SINGLE_DES) == "single DES"
    refused = _refusal_of(_open(der, ra, policy=dataclasses.replace(POLICY, allow_des=False)), ErrorCode.ALGORITHM_REFUSED)
    assert refused.exchange.cipher is enveloped.ContentCipher.DES_CBC and "allow_des" in refused.refusal.reason
    assert refused.exchange.weak == frozenset()  # refused, not accepted as weak


def test_triple_des_is_not_weak(ra, device):
    opened = _open(_message(ra, device, _csr(device[1]), cipher=enveloped.ContentCipher.DES_EDE3_CBC), ra)
    assert isinstance(opened, PkcsReq) and opened.exchange.weak == frozenset()


# --- the way back -------------------------------------------------------------------------------


def _reply(body: bytes, ra):
    reply = parse_pki_message(body, (ra[0],))
    assert reply.is_verified and reply.message_type is MessageType.CERT_REP
    return reply


def test_the_certrep_mirrors_the_exchange_and_is_sealed_as_the_request_was(ra, ca, device):
    oaep = enveloped.KeyTransport("rsaes_oaep", "sha256")
    opened = _open(_message(ra, device, _csr(device[1]), cipher=enveloped.ContentCipher.AES_256_GCM, transport=oaep,
                            digest="sha384"), ra)
    assert opened.exchange.key_transport == oaep
    body = build_cert_rep(opened.exchange, CertRepReply(PkiStatus.SUCCESS, (ca[0],)), signer_certificate=ra[0],
                          signer_key=ra[1], now=NOW)
    reply = _reply(body, ra)
    assert (reply.transaction_id, reply.recipient_nonce, reply.digest_algorithm) == ("TX-1", b"nonce-0123456789", "sha384")
    assert reply.other_attributes["signing_time"] == [NOW]
    inner = enveloped.decrypt_enveloped(reply.envelope, [device])
    assert (inner.cipher, inner.key_transport) == (enveloped.ContentCipher.AES_256_GCM, oaep)
    assert signed.parse_certs_only(inner.content) == [ca[0]]


def test_a_failure_to_a_refused_exchange_has_no_envelope(ra, device):
    opened = _open(_message(ra, device, _csr(device[1]), digest="md5"), ra)
    reply_value = CertRepReply(PkiStatus.FAILURE, fail_info=opened.refusal.fail_info, fail_info_text=opened.refusal.fail_info_text)
    reply = _reply(build_cert_rep(opened.exchange, reply_value, signer_certificate=ra[0], signer_key=ra[1]), ra)
    assert reply.pki_status is PkiStatus.FAILURE and reply.fail_info is FailInfo.BAD_ALG
    assert reply.fail_info_text.startswith("AlgorithmRefused: ")
    assert reply.envelope == b"" and reply.digest_algorithm == "sha256"  # never answered in MD5


def test_an_exchange_without_a_cipher_is_answered_in_aes_128_cbc(ra, ca, device):
    exchange = Exchange(MessageType.PKCS_REQ, "TX-2", b"n" * 16, "sha256", device[0])
    reply = _reply(build_cert_rep(exchange, CertRepReply(PkiStatus.SUCCESS, (ca[0],)), signer_certificate=ra[0],
                                  signer_key=ra[1]), ra)
    assert enveloped.decrypt_enveloped(reply.envelope, [device]).cipher is enveloped.ContentCipher.AES_128_CBC


def test_an_ec_signer_is_answered_by_key_agreement(ra, ca):
    key = ec.generate_private_key(ec.SECP256R1())
    signer = (_certificate(key, "ec device"), key)
    opened = _open(_message(ra, signer, _csr(key)), ra)
    assert isinstance(opened, PkcsReq)
    reply = _reply(build_cert_rep(opened.exchange, CertRepReply(PkiStatus.SUCCESS, (ca[0],)),
                                  signer_certificate=ra[0], signer_key=ra[1]), ra)
    inner = enveloped.decrypt_enveloped(reply.envelope, [signer])
    assert inner.key_transport is None and signed.parse_certs_only(inner.content) == [ca[0]]


# --- hostile input -------------------------------------------------------------------------------


def test_mutated_messages_are_opened_or_refused_never_raised(ra, device):
    """Truncations and bit flips all over a request: every one gives a request or a Refused."""
    good = _message(ra, device, _csr(device[1]))
    rng = random.Random(8894)
    mutants = [good[: rng.randrange(len(good))] for _ in range(100)]
    for _ in range(300):
        data = bytearray(good)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        mutants.append(bytes(data))
    kinds = {type(_open(data, ra)).__name__ for data in mutants}
    assert kinds <= {"PkcsReq", "Refused"} and "Refused" in kinds
