"""The protocol layer on real captured messages and against OpenSSL's CMS implementation."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from conftest import VECTORS
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scepd.protocol import (
    FailInfo,
    MessageType,
    PkiStatus,
    ProtocolError,
    enveloped,
    signed,
)
from scepd.protocol.csr import parse_csr
from scepd.protocol.errors import ErrorCode
from scepd.protocol.message import (
    CertRepReply,
    Exchange,
    build_cert_rep,
    build_pki_message,
    parse_pki_message,
)

APPLE = VECTORS / "apple-ios-pkcsreq"
NDES = VECTORS / "ndes-certrep"


@pytest.fixture(scope="module")
def apple_ca(tmp_path_factory):
    """The vector's CA key is PEM encrypted with an empty passphrase, which cryptography
    will not take; OpenSSL decrypts it."""
    out = tmp_path_factory.mktemp("apple") / "ca.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(APPLE / "ca.key"), "-passin", "pass:", "-out", str(out)], check=True
    )
    key = serialization.load_pem_private_key(out.read_bytes(), None)
    cert = x509.load_pem_x509_certificate((APPLE / "ca.pem").read_bytes())
    return cert, key


def _self_signed(key, cn="test signer"):
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def pair():
    key = rsa.generate_private_key(65537, 2048)
    return _self_signed(key), key


# --- the Apple PKCSReq --------------------------------------------------------------------


def test_apple_pkcsreq_outer_layer_verifies():
    message = parse_pki_message((APPLE / "PKCSReq.der").read_bytes())
    assert message.is_verified, message.signature_error
    assert message.message_type is MessageType.PKCS_REQ
    assert message.transaction_id == "A13090761A30F66664F85D37433D2065E1112BA1"
    assert len(message.sender_nonce) == 8
    assert message.digest_algorithm == "sha1"
    assert message.signer_certificate.subject.rfc4514_string() == "C=US,CN=MDM SCEP SIGNER"


def test_apple_pkcsreq_decrypts_and_its_version_2_csr_is_accepted(apple_ca):
    message = parse_pki_message((APPLE / "PKCSReq.der").read_bytes())
    opened = enveloped.decrypt_enveloped(message.envelope, [apple_ca])
    assert opened.cipher is enveloped.ContentCipher.DES_EDE3_CBC
    assert opened.key_transport == enveloped.PKCS1V15
    with pytest.raises(x509.InvalidVersion):  # the reason for the two-step parse
        x509.load_der_x509_csr(opened.content)
    request = parse_csr(opened.content)
    assert request.version == 2
    assert request.subject.rfc4514_string() == "CN=com.apple.security.scep.063D7953-1338-4BF0-8F99-913382996224"
    assert request.key_description == "RSA-1024"
    assert request.key_usage.digital_signature and not request.key_usage.key_encipherment


def test_apple_csr_with_altered_subject_fails_proof_of_possession(apple_ca):
    message = parse_pki_message((APPLE / "PKCSReq.der").read_bytes())
    der = enveloped.decrypt_enveloped(message.envelope, [apple_ca]).content
    req = asn1_csr.CertificationRequest.load(der)
    req["certification_request_info"]["subject"] = asn1_x509.Name.build({"common_name": "attacker"})
    with pytest.raises(ProtocolError) as info:
        parse_csr(req.dump(force=True))
    assert info.value.code is ErrorCode.CSR_SIGNATURE_INVALID
    assert info.value.fail_info is FailInfo.BAD_MESSAGE_CHECK


def test_micromdm_certrep_to_the_apple_request():
    request = parse_pki_message((APPLE / "PKCSReq.der").read_bytes())
    reply = parse_pki_message((APPLE / "CertRep-from-micromdm.der").read_bytes())
    assert reply.is_verified, reply.signature_error
    assert reply.message_type is MessageType.CERT_REP
    assert reply.pki_status is PkiStatus.SUCCESS
    assert reply.transaction_id == request.transaction_id
    assert reply.recipient_nonce == request.sender_nonce


# --- the NDES CertRep ---------------------------------------------------------------------


def test_ndes_certrep_without_certificates_verifies_with_the_ra_from_getcacert():
    der = (NDES / "CertRep.der").read_bytes()
    ra = x509.load_pem_x509_certificate((NDES / "ra.pem").read_bytes())
    unknown = parse_pki_message(der)
    assert unknown.signer_certificate is None and not unknown.is_verified
    reply = parse_pki_message(der, (ra,))
    assert reply.is_verified, reply.signature_error
    assert reply.certificates == ()
    assert reply.pki_status is PkiStatus.SUCCESS
    assert reply.message_type is MessageType.CERT_REP
    assert "1.3.6.1.4.1.311.21.38" in reply.other_attributes
    # The envelope is for the device (its key is not published): check the algorithms only.
    from asn1crypto import cms as asn1_cms

    envelope = asn1_cms.ContentInfo.load(reply.envelope)["content"]
    assert envelope["recipient_infos"][0].chosen["key_encryption_algorithm"]["algorithm"].native == "rsaes_oaep"
    assert envelope["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native == "aes128_cbc"


# --- envelopes: every cipher and key transport, both directions ---------------------------


@pytest.mark.parametrize("cipher", list(enveloped.ContentCipher))
@pytest.mark.parametrize("transport", [enveloped.PKCS1V15, enveloped.KeyTransport("rsaes_oaep", "sha1"), enveloped.KeyTransport("rsaes_oaep", "sha256")])
def test_envelope_round_trip(pair, cipher, transport):
    cert, key = pair
    sealed = enveloped.build_enveloped(b"secret content" * 7, cert, cipher, transport)
    opened = enveloped.decrypt_enveloped(sealed, [(cert, key)])
    assert opened.content == b"secret content" * 7
    assert opened.cipher is cipher
    assert opened.key_transport == transport


def test_envelope_to_someone_else_is_badmessagecheck(pair):
    cert, _ = pair
    other_key = rsa.generate_private_key(65537, 2048)
    sealed = enveloped.build_enveloped(b"x", cert, enveloped.ContentCipher.AES_128_CBC)
    with pytest.raises(ProtocolError) as info:
        enveloped.decrypt_enveloped(sealed, [(_self_signed(other_key), other_key)])
    assert info.value.code is ErrorCode.RECIPIENT_UNKNOWN


def test_rsa_key_that_does_not_decrypt_is_replaced_by_a_substitute(pair, monkeypatch):
    """Implicit rejection (Bleichenbacher): a content key that fails RSA decryption is not
    refused there; decryption goes on with a substitute derived from the encrypted key. Shown
    by sealing the content with that substitute: it then opens. Without the substitute the
    same request fails, identically every time."""
    from asn1crypto import cms as asn1_cms

    cert, key = pair
    bad_key_field = b"\x00" + os.urandom(255)  # bad PKCS #1 v1.5 padding
    substitute = enveloped.rejection_key(bad_key_field, 16)
    monkeypatch.setattr(os, "urandom", lambda n, real=os.urandom: substitute if n == 16 else real(n))
    value = asn1_cms.ContentInfo.load(enveloped.build_enveloped(b"sealed with K", cert, enveloped.ContentCipher.AES_128_GCM))
    monkeypatch.undo()
    value["content"]["recipient_infos"][0].chosen["encrypted_key"] = bad_key_field
    assert enveloped.decrypt_enveloped(value.dump(force=True), [(cert, key)]).content == b"sealed with K"

    value = asn1_cms.ContentInfo.load(enveloped.build_enveloped(b"sealed with a real key", cert, enveloped.ContentCipher.AES_128_CBC))
    value["content"]["recipient_infos"][0].chosen["encrypted_key"] = bad_key_field
    broken = value.dump(force=True)
    answers = set()
    for _ in range(2000):  # a fresh random key each time would let CBC padding pass ~once in 256
        try:
            enveloped.decrypt_enveloped(broken, [(cert, key)])
            answers.add("opened")
        except ProtocolError as exc:
            answers.add((exc.code, exc.reason))
    assert len(answers) == 1, answers


def _openssl(*args, input=None) -> bytes:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def pem_files(pair, tmp_path_factory):
    cert, key = pair
    d = tmp_path_factory.mktemp("pem")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d


@pytest.mark.parametrize(
    "options,cipher,transport",
    [
        (["-des3"], enveloped.ContentCipher.DES_EDE3_CBC, "rsaes_pkcs1v15"),
        (["-aes-256-cbc"], enveloped.ContentCipher.AES_256_CBC, "rsaes_pkcs1v15"),
        (["-aes-128-cbc", "-recip", "CERT", "-keyopt", "rsa_padding_mode:oaep"], enveloped.ContentCipher.AES_128_CBC, "rsaes_oaep"),
        (["-aes-128-gcm"], enveloped.ContentCipher.AES_128_GCM, "rsaes_pkcs1v15"),
    ],
)
def test_decrypts_what_openssl_encrypts_in_ber(pair, pem_files, options, cipher, transport):
    # -stream makes OpenSSL write indefinite-length BER.
    cert = str(pem_files / "cert.pem")
    if "-recip" not in options:
        options = [*options, "-recip", "CERT"]
    options = [cert if o == "CERT" else o for o in options]
    sealed = _openssl("cms", "-encrypt", "-stream", "-binary", "-outform", "DER", *options, input=b"hello from openssl")
    assert sealed[1] == 0x80, "expected indefinite-length BER from openssl -stream"
    opened = enveloped.decrypt_enveloped(sealed, [pair])
    assert opened.content == b"hello from openssl"
    assert opened.cipher is cipher
    assert opened.key_transport.scheme == transport


@pytest.mark.parametrize("cipher", [enveloped.ContentCipher.AES_128_CBC, enveloped.ContentCipher.DES_EDE3_CBC, enveloped.ContentCipher.AES_256_GCM])
def test_openssl_decrypts_what_we_encrypt(pair, pem_files, cipher):
    cert, _ = pair
    sealed = enveloped.build_enveloped(b"hello from scepd", cert, cipher)
    out = _openssl("cms", "-decrypt", "-inform", "DER", "-inkey", str(pem_files / "key.pem"), input=sealed)
    assert out == b"hello from scepd"


def test_ber_signed_data_from_openssl_verifies(pair, pem_files):
    cert, _ = pair
    ber_signed = _openssl(
        "cms", "-sign", "-stream", "-binary", "-nodetach", "-outform", "DER", "-md", "sha256",
        "-signer", str(pem_files / "cert.pem"), "-inkey", str(pem_files / "key.pem"), input=b"signed payload",
    )
    assert ber_signed[1] == 0x80
    message = signed.parse_signed_data(ber_signed)
    assert message.signature_error is None
    assert message.content == b"signed payload"
    assert message.signer_certificate == cert


def test_openssl_verifies_our_pki_message(pair, pem_files):
    cert, key = pair
    der = build_pki_message(
        message_type=MessageType.PKCS_REQ, transaction_id="T1", signer_certificate=cert,
        signer_key=key, digest_algorithm="sha256", envelope=b"payload",
    )
    out = _openssl("cms", "-verify", "-inform", "DER", "-noverify", input=der)
    assert out == b"payload"


def test_threads_sharing_our_parsed_certificates_all_succeed(pair):
    """The server's threads share asn1crypto's parsed views of its own certificates and the
    parts of its replies built once per signer. asn1crypto parses lazily; parsed on first
    use by several threads at once, a half-built view failed requests with "No field
    numbered 1 is present" (10 to 19 of 480 here before the fix). Python is made to switch
    threads as often as it can, and each round's certificate is new to the caches."""
    key = pair[1]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors: list[str] = []

    def work(cert, envelope, barrier):
        barrier.wait()
        try:
            assert enveloped.decrypt_enveloped(envelope, [(cert, key)]).content == b"hello"
            reply = signed.build_signed_data(b"reply", cert, key, "sha256", [("scep_message_type", "3")])
            assert signed.parse_signed_data(reply, (cert,)).signature_error is None
        except Exception as exc:  # collected: an exception in a thread would be lost
            errors.append(repr(exc))

    try:
        for i in range(60):
            cert = _self_signed(key, f"shared {i}")
            envelope = enveloped.build_enveloped(b"hello", cert, enveloped.ContentCipher.AES_128_CBC)
            barrier = threading.Barrier(8)
            threads = [threading.Thread(target=work, args=(cert, envelope, barrier)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_tampered_content_is_reported_not_raised(pair):
    cert, key = pair
    der = bytearray(build_pki_message(
        message_type=MessageType.PKCS_REQ, transaction_id="T1", signer_certificate=cert,
        signer_key=key, digest_algorithm="sha256", envelope=b"payload-payload",
    ))
    index = der.index(b"payload-payload")
    der[index] ^= 1
    message = parse_pki_message(bytes(der))
    assert message.transaction_id == "T1"
    assert "messageDigest" in message.signature_error


def test_certrep_mirrors_the_request(pair):
    cert, key = pair
    ra_key = rsa.generate_private_key(65537, 2048)
    ra = _self_signed(ra_key, "ra")
    request = parse_pki_message(build_pki_message(
        message_type=MessageType.PKCS_REQ, transaction_id="TX-42", signer_certificate=cert,
        signer_key=key, digest_algorithm="sha512", envelope=b"", sender_nonce=b"n" * 16,
    ))
    exchange = Exchange(request.message_type, request.transaction_id, request.sender_nonce,
                        request.digest_algorithm, request.signer_certificate, enveloped.ContentCipher.AES_256_CBC)
    issued = _self_signed(rsa.generate_private_key(65537, 2048), "issued")
    body = build_cert_rep(
        exchange, CertRepReply(PkiStatus.SUCCESS, (issued,)), signer_certificate=ra, signer_key=ra_key,
    )
    reply = parse_pki_message(body, (ra,))
    assert reply.is_verified
    assert (reply.transaction_id, reply.recipient_nonce, reply.digest_algorithm) == ("TX-42", b"n" * 16, "sha512")
    opened = enveloped.decrypt_enveloped(reply.envelope, [(cert, key)])
    assert opened.cipher is enveloped.ContentCipher.AES_256_CBC
    assert signed.parse_certs_only(opened.content)[0] == issued
    # strongSwan 5.9 wants the plain rsaEncryption OID in the SignerInfo.
    from asn1crypto import cms as asn1_cms

    signer_info = asn1_cms.ContentInfo.load(body)["content"]["signer_infos"][0]
    assert signer_info["signature_algorithm"]["algorithm"].dotted == "1.2.840.113549.1.1.1"


@pytest.mark.parametrize("garbage", [b"", b"\x30\x03\x02\x01", b"not asn1 at all", b"\x30\x80" + b"\x00" * 10])
def test_garbage_is_a_protocol_error(garbage):
    with pytest.raises(ProtocolError) as info:
        parse_pki_message(garbage)
    assert info.value.code is ErrorCode.MESSAGE_UNDECODABLE


def test_every_protocol_error_code_has_an_entry_in_the_error_table():
    import re

    from scepd.protocol.errors import ERRORS

    source = "".join(p.read_text() for p in Path(enveloped.__file__).parent.glob("*.py"))
    codes = set(re.findall(r"(?:ProtocolError|Refusal)\(\s*ErrorCode\.(\w+)", source))
    assert codes, "no codes found: the pattern is out of date"
    known = {c.name for c in ErrorCode if c in ERRORS}
    assert codes <= known, codes - known
    # Every ProtocolError is raised with a member of the vocabulary, none with a free string.
    assert not re.findall(r'ProtocolError\(\s*(?:FailInfo\.|")', source)


def test_mutated_messages_give_protocol_errors_never_crashes(pair):
    """Truncations and bit flips all over a real request: parsing and opening it either work
    or raise ProtocolError (which becomes a FAILURE or a 400), never anything else."""
    import random

    cert, key = pair
    ra_key = rsa.generate_private_key(65537, 2048)
    ra = _self_signed(ra_key, "ra")
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "fuzz")])
    ).sign(key, hashes.SHA256())
    good = build_pki_message(
        message_type=MessageType.PKCS_REQ, transaction_id="FUZZ", signer_certificate=cert, signer_key=key,
        digest_algorithm="sha256",
        envelope=enveloped.build_enveloped(csr.public_bytes(serialization.Encoding.DER), ra, enveloped.ContentCipher.AES_128_CBC),
    )
    rng = random.Random(8894)
    mutants = [good[: rng.randrange(len(good))] for _ in range(150)]
    for _ in range(350):
        data = bytearray(good)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        mutants.append(bytes(data))
    outcomes = {"ok": 0, "refused": 0}
    for data in mutants:
        try:
            message = parse_pki_message(data)
            opened = enveloped.decrypt_enveloped(message.envelope, [(ra, ra_key)])
            parse_csr(opened.content)
            outcomes["ok"] += 1
        except ProtocolError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100  # the mutations did reach the parsers


def test_signed_attributes_from_encodings_are_asn1cryptos_own_encoding():
    """The reply's per-message attributes are put together from their values' encodings (for
    speed): byte for byte what asn1crypto writes for the same attribute."""
    import datetime as dt
    import os

    from asn1crypto import cms

    from scepd.protocol.signed import _attribute

    for name, value in [("scep_sender_nonce", os.urandom(16)), ("scep_recipient_nonce", os.urandom(16)),
                        ("scep_transaction_id", "4F1D0A"), ("message_digest", os.urandom(32)),
                        ("signing_time", cms.Time({"utc_time": dt.datetime.now(dt.timezone.utc)})),
                        ("scep_fail_info_text", "BadRequest: ünïcode")]:
        assert _attribute(name, value).dump() == cms.CMSAttribute({"type": name, "values": [value]}).dump(), name


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
@pytest.mark.parametrize("content", [b"", b"an envelope" * 40])
def test_signed_data_from_encodings_is_asn1cryptos_own_encoding(key_type, content):
    """Our SignedData is put together from its parts' encodings (for speed): byte for byte
    what asn1crypto writes when it builds the same structure from Python values."""
    import datetime as dt

    from asn1crypto import cms
    from cryptography.hazmat.primitives.asymmetric import ec

    from scepd.protocol.certificates import issuer_and_serial, to_asn1

    key = rsa.generate_private_key(65537, 2048) if key_type == "rsa" else ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, "encodings")
    extra = _self_signed(rsa.generate_private_key(65537, 2048), "another")
    when = dt.datetime(2026, 12, 2, 1, 2, 3, tzinfo=dt.timezone.utc)
    attributes = [("scep_message_type", "3"), ("scep_transaction_id", "T-1"), ("scep_sender_nonce", b"n" * 16),
                  ("scep_recipient_nonce", b"r" * 16), ("scep_pki_status", "0")]
    for certificates in ((), (extra,)):
        ours = signed.build_signed_data(content, cert, key, "sha256", attributes, certificates, signing_time=when)
        signer = cms.ContentInfo.load(ours)["content"]["signer_infos"][0]
        digest = hashes.Hash(hashes.SHA256())
        digest.update(content)
        reference = cms.ContentInfo({"content_type": "signed_data", "content": {
            "version": "v1",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {"content_type": "data", "content": content},
            "certificates": [to_asn1(c) for c in (cert, *certificates)],
            "signer_infos": [{
                "version": "v1",
                "sid": issuer_and_serial(cert, cms.SignerIdentifier),
                "digest_algorithm": {"algorithm": "sha256"},
                "signed_attrs": [{"type": "content_type", "values": ["data"]},
                                 {"type": "signing_time", "values": [cms.Time({"utc_time": when})]},
                                 {"type": "message_digest", "values": [digest.finalize()]}]
                + [{"type": name, "values": [value]} for name, value in attributes],
                "signature_algorithm": {"algorithm": "rsassa_pkcs1v15" if key_type == "rsa" else "sha256_ecdsa"},
                "signature": signer["signature"].native,  # ECDSA's differs each time: ours, checked below
            }],
        }})
        assert ours == reference.dump()
        assert signed.parse_signed_data(ours).signature_error is None


def _stripped_by_asn1crypto(der: bytes) -> bytes:
    """The stored form of a request as asn1crypto builds it from the parsed parts (how it was
    made before it was put together from encodings): the reference for the test below."""
    request = asn1_csr.CertificationRequest.load(der)
    info = request["certification_request_info"]
    kept = [a for a in info["attributes"] if a["type"].native != "challenge_password"]
    return asn1_csr.CertificationRequest({
        "certification_request_info": asn1_csr.CertificationRequestInfo({
            "version": info["version"], "subject": info["subject"], "subject_pk_info": info["subject_pk_info"],
            "attributes": asn1_csr.CRIAttributes(kept)}),
        "signature_algorithm": request["signature_algorithm"],
        "signature": request["signature"],
    }).dump()


def test_the_stored_request_from_encodings_is_what_asn1crypto_builds(apple_ca):
    """Stored requests (without their challengePassword) are recognised as resent by their
    bytes: putting them together from encodings must give asn1crypto's bytes exactly, for our
    client's requests, Apple's version 2 one, and attributes sent unsorted (strongSwan)."""
    from scepd.client import build_csr
    from scepd.protocol.csr import without_challenge_password

    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "stored")])
    ours = build_csr(key, name, challenge="s3cret", sans=[x509.DNSName("a.example")]).public_bytes(serialization.Encoding.DER)
    message = parse_pki_message((APPLE / "PKCSReq.der").read_bytes())
    apple = enveloped.decrypt_enveloped(message.envelope, [apple_ca]).content
    unsorted = asn1_csr.CertificationRequest.load(ours)
    attributes = list(unsorted["certification_request_info"]["attributes"])
    unsorted["certification_request_info"]["attributes"] = asn1_csr.CRIAttributes(attributes[::-1])
    unsorted_der = unsorted.dump(force=True)
    no_challenge = build_csr(key, name, challenge=None).public_bytes(serialization.Encoding.DER)
    for der in (ours, apple, unsorted_der, no_challenge):
        expected = _stripped_by_asn1crypto(der) if der is not no_challenge else der
        assert without_challenge_password(der) == expected
        assert b"s3cret" not in expected
    assert parse_csr(ours).without_challenge == _stripped_by_asn1crypto(ours)


def test_signed_attributes_read_from_elements_are_what_cmsattribute_reads():
    """The signed attributes of a peer's message are read element by element (for speed):
    the same names and values as asn1crypto's CMSAttribute gives, for Apple's request,
    NDES's and micromdm's replies, our own messages, and attribute types asn1crypto's table
    does not know (S/MIME capabilities, a private OID) or with several values."""
    from asn1crypto import cms, core

    from scepd.protocol.signed import _signed_attributes

    def reference(signed_attrs):
        return {a["type"].native: [v.native if isinstance(v, core.Asn1Value) else v for v in a["values"]]
                for a in signed_attrs}

    key = rsa.generate_private_key(65537, 2048)
    cert = _self_signed(key, "attributes")
    messages = [(APPLE / "PKCSReq.der").read_bytes(), (APPLE / "CertRep-from-micromdm.der").read_bytes(),
                (VECTORS / "ndes-certrep" / "CertRep.der").read_bytes(),
                signed.build_signed_data(b"x", cert, key, "sha256", [
                    ("scep_message_type", "3"), ("scep_pki_status", "2"), ("scep_fail_info", "2"),
                    ("scep_fail_info_text", "BadRequest: ünïcode"), ("scep_transaction_id", "T-1"),
                    ("scep_sender_nonce", os.urandom(16)), ("scep_recipient_nonce", os.urandom(8))])]
    info = cms.ContentInfo.load(messages[-1])
    attrs = info["content"]["signer_infos"][0]["signed_attrs"]
    extra = cms.CMSAttributes(list(attrs) + [
        cms.CMSAttribute({"type": "1.2.840.113549.1.9.15", "values": [core.Any.load(b"\x30\x03\x02\x01\x05")]}),
        cms.CMSAttribute({"type": "1.3.6.1.4.1.99999.1", "values": [core.Any.load(b"\x0c\x01a"), core.Any.load(b"\x04\x00")]}),
    ], implicit=0)
    for signed_attrs in [cms.ContentInfo.load(m)["content"]["signer_infos"][0]["signed_attrs"] for m in messages] + [
            cms.CMSAttributes.load(extra.dump(), implicit=0)]:
        names, covered = _signed_attributes(signed_attrs)
        assert names == reference(signed_attrs)
        assert covered[0] == 0x31 and covered.endswith(signed_attrs.contents)  # the SET OF, as sent
    assert _signed_attributes(None) == ({}, None)
