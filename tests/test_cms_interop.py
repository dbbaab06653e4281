"""CMS as other implementations write it: BER in every legal form (Go's go.mozilla.org/pkcs7,
OpenSSL's -stream), envelopes to several recipients, single DES, and EC recipients by ECDH
key agreement (RFC 5753), checked against OpenSSL and end to end over HTTP."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import httpx
import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import parser
from asn1crypto import x509 as asn1_x509
from conftest import CHALLENGE, openssl_verify
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from scepd.client import ScepClient, build_csr
from scepd.client.client import self_signed
from scepd.protocol import (
    MessageType,
    PkiStatus,
    ProtocolError,
    ber,
    enveloped,
    errors,
    signed,
)
from scepd.protocol.errors import ErrorCode
from scepd.protocol.message import build_pki_message, parse_pki_message


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(key, cn: str) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def rsa_pair():
    key = rsa.generate_private_key(65537, 2048)
    return _cert(key, "rsa recipient"), key


# --- writing BER: the encodings other implementations send, made from our DER ----------------
# Only asn1crypto's parser reads and writes the elements; an indefinite length is the
# identifier octets emit() writes, 0x80, the contents and the end-of-contents octets.


def _indefinite(class_: int, tag: int, contents: bytes) -> bytes:
    return parser.emit(class_, 1, tag, b"")[:-1] + b"\x80" + contents + b"\x00\x00"


def _children(contents: bytes) -> list[tuple]:
    out, pointer = [], 0
    while pointer < len(contents):
        element = parser.parse(contents[pointer:])
        out.append(element)
        pointer += len(element[3]) + len(element[4]) + len(element[5])
    return out


def _encoding(element: tuple) -> bytes:
    return element[3] + element[4] + element[5]


def _rewrite(der: bytes, path: tuple[int, ...], change) -> bytes:
    """`der` with the element at `path` (child indexes from the top element) replaced by
    change(element); every element around it keeps its form."""
    element = parser.parse(der)
    if not path:
        return change(element)
    class_, _, tag, _, contents, trailer = element
    parts = [_encoding(c) for c in _children(contents)]
    parts[path[0]] = _rewrite(parts[path[0]], path[1:], change)
    joined = b"".join(parts)
    return _indefinite(class_, tag, joined) if trailer else parser.emit(class_, 1, tag, joined)


def _segments(value: bytes, size: int = 7) -> bytes:
    return b"".join(parser.emit(0, 0, 4, value[i:i + size]) for i in range(0, len(value), size))


def segmented_definite(element):
    """A string as Go's pkcs7 writes encryptedContent: constructed, definite length."""
    class_, _, tag, _, value, _ = element
    return parser.emit(class_, 1, tag, _segments(value))


def segmented_indefinite(element):
    class_, _, tag, _, value, _ = element
    return _indefinite(class_, tag, _segments(value))


def go_single_segment(element):
    """go.mozilla.org/pkcs7's marshalEncryptedContent: [0] constructed around one OCTET STRING."""
    class_, _, tag, _, value, _ = element
    return parser.emit(class_, 1, tag, parser.emit(0, 0, 4, value))


def segmented_nested(element):
    """Segments in segments, both length forms: indefinite { definite { a, b }, indefinite
    { c }, d }."""
    class_, _, tag, _, value, _ = element
    a, b, c, d = value[:5], value[5:40], value[40:41], value[41:]
    inner = parser.emit(0, 1, 4, parser.emit(0, 0, 4, a) + parser.emit(0, 0, 4, b))
    inner += _indefinite(0, 4, parser.emit(0, 0, 4, c)) + parser.emit(0, 0, 4, d)
    return _indefinite(class_, tag, inner)


def indefinite(element):
    class_, _, tag, _, contents, _ = element
    return _indefinite(class_, tag, contents)


def indefinite_everywhere(der: bytes, keep: tuple[tuple[int, ...], ...] = (), path: tuple[int, ...] = ()) -> bytes:
    """Every constructed element indefinite-length, except the subtrees at `keep`."""
    class_, constructed, tag, _, contents, _ = element = parser.parse(der)
    if not constructed or path in keep:
        return _encoding(element)
    parts = [indefinite_everywhere(_encoding(c), keep, (*path, i)) for i, c in enumerate(_children(contents))]
    return _indefinite(class_, tag, b"".join(parts))


# Where things are in the messages build_pki_message and build_enveloped write.
ENCRYPTED_CONTENT = (1, 0, 2, 2)  # ContentInfo [0] EnvelopedData encryptedContentInfo [0]
E_CONTENT = (1, 0, 2, 1, 0)  # ContentInfo [0] SignedData encapContentInfo [0] OCTET STRING
CERTIFICATES = (1, 0, 3)
SIGNER_INFO = (1, 0, 4, 0)
SIGNER_IDENTIFIER = (*SIGNER_INFO, 1)
SIGNED_ATTRIBUTES = (*SIGNER_INFO, 3)
SIGNATURE = (*SIGNER_INFO, 5)


# --- reading BER: every form of every string, indefinite SEQUENCEs and CHOICEs ------------


def test_der_takes_the_fast_path_and_is_its_own_der_form(rsa_pair, monkeypatch):
    """What asn1crypto reads as sent is never rewritten: DER costs what it did before."""
    cert, key = rsa_pair
    envelope = enveloped.build_enveloped(b"fast", cert, enveloped.ContentCipher.DES_EDE3_CBC)
    der = build_pki_message(message_type=MessageType.PKCS_REQ, transaction_id="DER", signer_certificate=cert,
                            signer_key=key, digest_algorithm="sha256", envelope=envelope)
    assert ber.readable_ber(der, der=True) == der

    def rewritten(*args, **kwargs):
        raise AssertionError("DER was rewritten")

    monkeypatch.setattr(ber, "readable_ber", rewritten)
    message = parse_pki_message(der)
    assert message.is_verified
    assert enveloped.decrypt_enveloped(message.envelope, [rsa_pair]).content == b"fast"


ENVELOPE_FORMS = {
    "primitive": lambda e: _encoding(e),
    "constructed-definite": segmented_definite,
    "go-single-segment": go_single_segment,
    "constructed-indefinite": segmented_indefinite,
    "nested-segments": segmented_nested,
}


@pytest.mark.parametrize("form", list(ENVELOPE_FORMS))
@pytest.mark.parametrize("cipher", [enveloped.ContentCipher.DES_CBC, enveloped.ContentCipher.AES_128_CBC])
def test_encrypted_content_in_every_ber_form_opens(rsa_pair, form, cipher):
    cert, key = rsa_pair
    content = os.urandom(300)
    envelope = _handmade_envelope(content, [cert], cipher)
    ber = _rewrite(envelope, ENCRYPTED_CONTENT, ENVELOPE_FORMS[form])
    assert (ber == envelope) == (form == "primitive")
    opened = enveloped.decrypt_enveloped(ber, [(cert, key)])
    assert opened.content == content and opened.cipher is cipher


@pytest.mark.parametrize(
    "path",
    [(), (1,), (1, 0), (1, 0, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1), (1, 0, 1, 0, 1, 0), (1, 0, 2), (1, 0, 2, 1)],
    ids=["ContentInfo", "explicit", "EnvelopedData", "RecipientInfos", "KeyTransRecipientInfo",
         "RecipientIdentifier", "issuer-Name", "EncryptedContentInfo", "AlgorithmIdentifier"],
)
def test_envelope_with_an_indefinite_length_sequence_opens(rsa_pair, path):
    # asn1crypto alone fails on the CHOICE alternatives (KeyTransRecipientInfo, the rid).
    cert, key = rsa_pair
    envelope = enveloped.build_enveloped(b"indefinite", cert, enveloped.ContentCipher.DES_EDE3_CBC)
    assert enveloped.decrypt_enveloped(_rewrite(envelope, path, indefinite), [(cert, key)]).content == b"indefinite"


def test_envelope_indefinite_everywhere_opens(rsa_pair):
    cert, key = rsa_pair
    envelope = enveloped.build_enveloped(b"all of it", cert, enveloped.ContentCipher.DES_EDE3_CBC)
    ber = indefinite_everywhere(_rewrite(envelope, ENCRYPTED_CONTENT, segmented_nested))
    assert enveloped.decrypt_enveloped(ber, [(cert, key)]).content == b"all of it"


@pytest.fixture(scope="module")
def signed_request(rsa_pair):
    cert, key = rsa_pair
    envelope = os.urandom(200)
    der = build_pki_message(message_type=MessageType.PKCS_REQ, transaction_id="BER-1", signer_certificate=cert,
                            signer_key=key, digest_algorithm="sha256", envelope=envelope, sender_nonce=b"n" * 16)
    return der, envelope


SIGNED_FORMS = {
    "eContent-constructed-definite": lambda d: _rewrite(d, E_CONTENT, segmented_definite),
    "eContent-constructed-indefinite": lambda d: _rewrite(d, E_CONTENT, segmented_indefinite),
    "eContent-nested-segments": lambda d: _rewrite(d, E_CONTENT, segmented_nested),
    "SignerIdentifier-indefinite": lambda d: _rewrite(d, SIGNER_IDENTIFIER, indefinite),
    "SignerIdentifier-issuer-indefinite": lambda d: _rewrite(d, (*SIGNER_IDENTIFIER, 0), indefinite),
    "SignerInfo-indefinite": lambda d: _rewrite(d, SIGNER_INFO, indefinite),
    "certificate-indefinite": lambda d: _rewrite(d, (*CERTIFICATES, 0), indefinite),
    "signature-constructed-definite": lambda d: _rewrite(d, SIGNATURE, segmented_definite),
    # the senderNonce attribute's value (attributes: contentType, signingTime, messageDigest,
    # messageType, transactionID, senderNonce, as build_pki_message writes them, sorted)
    "attribute-value-constructed-definite": lambda d: _rewrite(
        d, _attribute_value_path(d, "scep_sender_nonce"), segmented_definite
    ),
    "attribute-value-constructed-indefinite": lambda d: _rewrite(
        d, _attribute_value_path(d, "scep_sender_nonce"), segmented_indefinite
    ),
    "attribute-value-nested-segments": lambda d: _rewrite(
        d, _attribute_value_path(d, "scep_sender_nonce"), segmented_nested
    ),
    # transactionID, a PrintableString: its segments are OCTET STRINGs too (X.690 8.23.6)
    "transaction-id-constructed-indefinite": lambda d: _rewrite(
        d, _attribute_value_path(d, "scep_transaction_id"), segmented_indefinite
    ),
    "transaction-id-nested-segments": lambda d: _rewrite(
        d, _attribute_value_path(d, "scep_transaction_id"), segmented_nested
    ),
    "indefinite-everywhere-but-certificates": lambda d: indefinite_everywhere(
        _rewrite(d, E_CONTENT, segmented_nested), keep=(CERTIFICATES,)
    ),
}


def _attribute_value_path(der: bytes, attribute: str) -> tuple[int, ...]:
    attrs = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]["signed_attrs"]
    index = next(i for i, a in enumerate(attrs) if a["type"].native == attribute)
    return (*SIGNED_ATTRIBUTES, index, 1, 0)


@pytest.mark.parametrize("form", list(SIGNED_FORMS))
def test_signed_data_in_ber_verifies(signed_request, rsa_pair, form):
    der, envelope = signed_request
    ber = SIGNED_FORMS[form](der)
    assert ber != der
    message = parse_pki_message(ber)
    assert message.is_verified, message.signature_error
    assert message.envelope == envelope
    assert message.signer_certificate == rsa_pair[0]
    assert (message.transaction_id, message.sender_nonce) == ("BER-1", b"n" * 16)


def _resigned(der: bytes, key, new_attributes: bytes) -> bytes:
    """`der` with signed attributes `new_attributes` (the [0] element, as they go on the wire),
    signed as they are sent."""
    as_sent_set = parser.emit(0, 1, 17, parser.parse(new_attributes)[4])
    signature = key.sign(as_sent_set, asym_padding.PKCS1v15(), hashes.SHA256())
    der = _rewrite(der, SIGNED_ATTRIBUTES, lambda e: new_attributes)
    return _rewrite(der, SIGNATURE, lambda e: parser.emit(0, 0, 4, signature))


def _attributes_with(der: bytes, change) -> bytes:
    """The [0] signed attributes of `der` with change(list of attribute encodings) applied."""
    element = parser.parse(der)
    for index in SIGNED_ATTRIBUTES:
        element = _children(element[4])[index]
    attributes = [_encoding(a) for a in _children(element[4])]
    return parser.emit(2, 1, 0, b"".join(change(attributes)))


def test_ber_signed_attributes_verify_over_their_der_form(signed_request):
    """RFC 5652 5.4: the signature covers the DER of the attributes. Sent with an
    indefinite-length attribute and in another order, they still verify (over the DER the
    signer signed); the bytes as sent do not."""
    der, _ = signed_request
    ber = _rewrite(der, (*SIGNED_ATTRIBUTES, 0), indefinite)
    ber = _rewrite(ber, SIGNED_ATTRIBUTES, lambda e: _attributes_with(ber, lambda attrs: attrs[::-1]))
    assert parse_pki_message(ber).is_verified
    # A changed attribute is not rescued by the DER form.
    tampered = ber.replace(b"BER-1", b"BER-2")
    assert "signature does not verify" in parse_pki_message(tampered).signature_error


def test_unsorted_attributes_signed_as_sent_verify(signed_request, rsa_pair):
    """Some clients sign their attributes in the order they send them, not DER's."""
    der, _ = signed_request
    unsorted = _resigned(der, rsa_pair[1], _attributes_with(der, lambda attrs: attrs[::-1]))
    assert parse_pki_message(unsorted).is_verified


def test_ber_attributes_signed_as_sent_verify_when_the_message_is_rewritten(signed_request, rsa_pair):
    """A client signing its BER attributes as it sends them, in a message asn1crypto reads only
    rewritten (a segmented eContent): the attributes as sent are found in the original."""
    der, envelope = signed_request
    ber_attributes = _attributes_with(der, lambda attrs: [_indefinite(0, 16, parser.parse(a)[4]) for a in attrs])
    message = _rewrite(_resigned(der, rsa_pair[1], ber_attributes), E_CONTENT, segmented_definite)
    parsed = parse_pki_message(message)
    assert parsed.is_verified, parsed.signature_error
    assert parsed.envelope == envelope


def test_constructed_string_that_is_not_segments_is_refused_with_asn1cryptos_reason(signed_request):
    # eContent constructed, but holding an INTEGER: no BER value, nothing to rewrite.
    der, _ = signed_request
    bogus = _rewrite(der, E_CONTENT, lambda e: parser.emit(0, 1, 4, parser.emit(0, 0, 2, b"\x01")))
    with pytest.raises(ProtocolError) as info:
        parse_pki_message(bogus)
    assert info.value.code is ErrorCode.MESSAGE_UNDECODABLE
    assert "method should have been primitive" in info.value.reason


@pytest.mark.parametrize("depth", [200, 20000])
def test_deeply_nested_ber_is_refused_not_crashed(signed_request, depth):
    der, _ = signed_request
    value = parser.emit(0, 0, 4, b"x")
    for _ in range(depth):
        value = parser.emit(0, 1, 4, value)
    with pytest.raises(ProtocolError) as info:
        parse_pki_message(_rewrite(der, E_CONTENT, lambda e: value))
    assert info.value.code is ErrorCode.MESSAGE_UNDECODABLE


# --- envelopes to several recipients, as Go clients write them -------------------------------


def _handmade_envelope(content: bytes, recipients: list[x509.Certificate], cipher: enveloped.ContentCipher) -> bytes:
    """An EnvelopedData with one PKCS #1 v1.5 KeyTransRecipientInfo per recipient, in order
    (Go's pkcs7.Encrypt), and a CBC cipher."""
    cek = os.urandom(cipher.key_size)
    block = 8 if cipher in (enveloped.ContentCipher.DES_CBC, enveloped.ContentCipher.DES_EDE3_CBC) else 16
    iv = os.urandom(block)
    padder = padding.PKCS7(block * 8).padder()
    algorithm = TripleDES(cek * 3 if len(cek) == 8 else cek) if block == 8 else algorithms.AES(cek)
    encryptor = Cipher(algorithm, modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    infos = []
    for recipient in recipients:
        asn1 = asn1_x509.Certificate.load(recipient.public_bytes(serialization.Encoding.DER))
        infos.append(asn1_cms.RecipientInfo(name="ktri", value={
            "version": "v0",
            "rid": asn1_cms.RecipientIdentifier(name="issuer_and_serial_number", value={
                "issuer": asn1.issuer, "serial_number": asn1.serial_number}),
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
            "encrypted_key": recipient.public_key().encrypt(cek, asym_padding.PKCS1v15()),
        }))
    return asn1_cms.ContentInfo({"content_type": "enveloped_data", "content": {
        "version": "v0",
        "recipient_infos": infos,
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": cipher.value, "parameters": iv},
            "encrypted_content": ciphertext,
        },
    }}).dump()


@pytest.mark.parametrize("order", ["ca-then-ra", "ra-then-ca"])
def test_envelope_to_two_recipients_opens_with_either_key(order):
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(2)]
    certs = [_cert(k, f"recipient {i}") for i, k in enumerate(keys)]
    if order == "ra-then-ca":
        certs, keys = certs[::-1], keys[::-1]
    envelope = _handmade_envelope(b"to both", certs, enveloped.ContentCipher.DES_CBC)
    envelope = _rewrite(envelope, ENCRYPTED_CONTENT, go_single_segment)
    for cert, key in zip(certs, keys, strict=True):
        opened = enveloped.decrypt_enveloped(envelope, [(cert, key)])
        assert (opened.content, opened.recipient) == (b"to both", cert)


# --- end to end over HTTP ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server):
    with ScepClient(server.url) as c:
        yield c


@pytest.fixture(scope="module")
def ca(client):
    return client.get_ca_certs()


def _post(server, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}?operation=PKIOperation", content=body,
                      headers={"Content-Type": "application/x-pki-message"})


def _enroll_over_http(server, ca, cn: str, envelope_for, message_form=lambda d: d, key=None):
    """A PKCSReq whose envelope (envelope_for(csr DER)) and pkiMessage (message_form) are
    written as another implementation would; returns (certificate, reply envelope's cipher)."""
    key = key or rsa.generate_private_key(65537, 2048)
    signer = (self_signed(key, name(cn)), key)
    csr = build_csr(key, name(cn), challenge=CHALLENGE).public_bytes(serialization.Encoding.DER)
    request = build_pki_message(message_type=MessageType.PKCS_REQ, transaction_id=f"T-{cn}",
                                signer_certificate=signer[0], signer_key=key, digest_algorithm="sha256",
                                envelope=envelope_for(csr))
    response = _post(server, message_form(request))
    assert response.status_code == 200, response.text
    reply = parse_pki_message(response.content, ca.all)
    assert reply.is_verified and reply.pki_status is PkiStatus.SUCCESS, reply.fail_info_text
    opened = enveloped.decrypt_enveloped(reply.envelope, [signer])
    certificate = signed.parse_certs_only(opened.content)[0]
    assert certificate.subject == name(cn)
    return certificate, opened.cipher


@pytest.mark.parametrize("order", ["ca-then-ra", "ra-then-ca"])
def test_go_client_request_enrolls(server, ca, ca_pem, tmp_path, order):
    """As go.mozilla.org/pkcs7 writes a request: encrypted to every certificate of GetCACert
    (CA and RA), single DES, encryptedContent constructed with a definite length. Answered
    before with FAILURE badRequest (method should have been primitive)."""
    recipients = [ca.ca, ca.ra] if order == "ca-then-ra" else [ca.ra, ca.ca]

    def envelope_for(csr):
        envelope = _handmade_envelope(csr, recipients, enveloped.ContentCipher.DES_CBC)
        return _rewrite(envelope, ENCRYPTED_CONTENT, go_single_segment)

    certificate, cipher = _enroll_over_http(server, ca, f"go-client-{order}", envelope_for)
    assert cipher is enveloped.ContentCipher.DES_CBC  # answered in the request's cipher
    verified = openssl_verify(ca_pem, pem(certificate), tmp_path)
    assert verified.returncode == 0, verified.stderr


HTTP_FORMS = {
    "encryptedContent-constructed-definite": (segmented_definite, None),
    "encryptedContent-nested-segments": (segmented_nested, None),
    "eContent-constructed-definite": (None, lambda d: _rewrite(d, E_CONTENT, segmented_definite)),
    "SignerIdentifier-indefinite": (None, lambda d: _rewrite(d, SIGNER_IDENTIFIER, indefinite)),
    "indefinite-everywhere": ("everywhere", lambda d: indefinite_everywhere(
        _rewrite(d, E_CONTENT, segmented_nested), keep=(CERTIFICATES,))),
}


@pytest.mark.parametrize("form", list(HTTP_FORMS))
def test_ber_request_enrolls(server, ca, ca_pem, tmp_path, form):
    envelope_form, message_form = HTTP_FORMS[form]

    def envelope_for(csr):
        envelope = _handmade_envelope(csr, [ca.ra], enveloped.ContentCipher.AES_128_CBC)
        if envelope_form == "everywhere":
            return indefinite_everywhere(_rewrite(envelope, ENCRYPTED_CONTENT, segmented_nested))
        return _rewrite(envelope, ENCRYPTED_CONTENT, envelope_form) if envelope_form else envelope

    certificate, _ = _enroll_over_http(server, ca, f"ber-{form}", envelope_for, message_form or (lambda d: d))
    verified = openssl_verify(ca_pem, pem(certificate), tmp_path)
    assert verified.returncode == 0, verified.stderr


def test_request_enveloped_by_openssl_stream_to_ca_and_ra_enrolls(server, ca, ca_pem, tmp_path):
    """A third-party producer: OpenSSL's streaming CMS writer (indefinite-length BER,
    segmented encryptedContent), to both certificates of GetCACert."""
    (tmp_path / "ra.pem").write_bytes(pem(ca.ra))
    (tmp_path / "ca.pem").write_bytes(pem(ca.ca))

    def envelope_for(csr):
        sealed = subprocess.run(
            ["openssl", "cms", "-encrypt", "-stream", "-binary", "-outform", "DER", "-des3",
             str(tmp_path / "ca.pem"), str(tmp_path / "ra.pem")],
            input=csr, capture_output=True, check=True,
        ).stdout
        assert sealed[1] == 0x80  # indefinite length
        return sealed

    certificate, cipher = _enroll_over_http(server, ca, "openssl-stream", envelope_for)
    assert cipher is enveloped.ContentCipher.DES_EDE3_CBC
    assert openssl_verify(ca_pem, pem(certificate), tmp_path).returncode == 0


# --- EC recipients: ECDH key agreement (RFC 5753) ---------------------------------------------

CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


@pytest.fixture(scope="module")
def ec_pairs():
    pairs = {}
    for label, curve in CURVES.items():
        key = ec.generate_private_key(curve())
        pairs[label] = (_cert(key, f"ec {label}"), key)
    return pairs


@pytest.mark.parametrize("curve", list(CURVES))
@pytest.mark.parametrize("cipher", list(enveloped.ContentCipher))
def test_envelope_to_an_ec_certificate_round_trip(ec_pairs, curve, cipher):
    cert, key = ec_pairs[curve]
    sealed = enveloped.build_enveloped(b"agreed" * 20, cert, cipher)
    info = asn1_cms.ContentInfo.load(sealed)["content"]["recipient_infos"][0]
    assert info.name == "kari"
    wrap = info.chosen["key_encryption_algorithm"]["parameters"]["algorithm"].native
    assert wrap == {8: "aes128_wrap_pad", 16: "aes128_wrap", 24: "aes192_wrap", 32: "aes256_wrap"}[cipher.key_size]
    opened = enveloped.decrypt_enveloped(sealed, [(cert, key)])
    assert (opened.content, opened.cipher, opened.key_transport) == (b"agreed" * 20, cipher, None)


def _openssl(*args, input=None) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], input=input, capture_output=True)


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
@pytest.mark.parametrize("cipher", [enveloped.ContentCipher.AES_128_CBC, enveloped.ContentCipher.AES_256_CBC,
                                    enveloped.ContentCipher.DES_EDE3_CBC, enveloped.ContentCipher.AES_256_GCM,
                                    enveloped.ContentCipher.DES_CBC])
def test_openssl_decrypts_our_envelope_to_an_ec_certificate(ec_pairs, tmp_path, curve, cipher):
    cert, key = ec_pairs[curve]
    (tmp_path / "key.pem").write_bytes(_key_pem(key))
    (tmp_path / "cert.pem").write_bytes(pem(cert))
    sealed = enveloped.build_enveloped(b"hello from scepd", cert, cipher)
    # Single DES is in OpenSSL 3's legacy provider.
    providers = ["-provider", "legacy", "-provider", "default"] if cipher is enveloped.ContentCipher.DES_CBC else []
    out = _openssl("cms", "-decrypt", *providers, "-inform", "DER", "-inkey", str(tmp_path / "key.pem"),
                   "-recip", str(tmp_path / "cert.pem"), input=sealed)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"hello from scepd"


@pytest.mark.parametrize(
    "options",
    [["-aes-128-cbc"], ["-aes-256-cbc", "-keyopt", "ecdh_kdf_md:sha256"], ["-aes-128-cbc", "-aes256-wrap"],
     ["-aes-256-gcm"], ["-aes-192-cbc", "-stream"]],
    ids=["sha1-kdf", "sha256-kdf", "aes256-wrap", "gcm", "stream"],
)
def test_we_open_what_openssl_encrypts_to_an_ec_certificate(ec_pairs, tmp_path, options):
    cert, key = ec_pairs["P-256"]
    (tmp_path / "cert.pem").write_bytes(pem(cert))
    # -keyopt applies to the -recip before it.
    sealed = _openssl("cms", "-encrypt", "-binary", "-outform", "DER", "-recip", str(tmp_path / "cert.pem"), *options,
                      input=b"hello from openssl")
    assert sealed.returncode == 0, sealed.stderr.decode()
    assert enveloped.decrypt_enveloped(sealed.stdout, [(cert, key)]).content == b"hello from openssl"


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_recipient_named_by_subject_key_identifier_opens(tmp_path, kind):
    """openssl -keyid names the recipient by its subjectKeyIdentifier: rKeyId in a
    KeyAgreeRecipientInfo, subjectKeyIdentifier in a KeyTransRecipientInfo."""
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name("keyid")).issuer_name(name("keyid")).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(pem(cert))
    sealed = _openssl("cms", "-encrypt", "-binary", "-outform", "DER", "-aes-128-cbc", "-keyid",
                      "-recip", str(tmp_path / "cert.pem"), input=b"by key id")
    assert sealed.returncode == 0, sealed.stderr.decode()
    info = asn1_cms.ContentInfo.load(sealed.stdout)["content"]["recipient_infos"][0]
    rid = info.chosen["recipient_encrypted_keys"][0]["rid"] if kind == "ec" else info.chosen["rid"]
    assert rid.name == ("r_key_id" if kind == "ec" else "subject_key_identifier")
    assert enveloped.decrypt_enveloped(sealed.stdout, [(cert, key)]).content == b"by key id"


def test_triple_des_key_wrap_is_refused_as_an_unsupported_algorithm(ec_pairs, tmp_path):
    # OpenSSL wraps a 3DES content key for an EC recipient with RFC 3217's CMS3DESwrap, which
    # scepd does not implement (it wraps 3DES keys with id-aes192-wrap itself).
    cert, key = ec_pairs["P-256"]
    (tmp_path / "cert.pem").write_bytes(pem(cert))
    sealed = _openssl("cms", "-encrypt", "-binary", "-outform", "DER", "-des3", "-recip", str(tmp_path / "cert.pem"),
                      input=b"3des")
    with pytest.raises(ProtocolError) as info:
        enveloped.decrypt_enveloped(sealed.stdout, [(cert, key)])
    assert info.value.code is ErrorCode.UNSUPPORTED_ALGORITHM and "1.2.840.113549.1.9.16.3.6" in info.value.reason


def test_ec_envelope_that_does_not_open_reads_like_any_other_decryption_failure(ec_pairs):
    cert, key = ec_pairs["P-256"]
    sealed = enveloped.build_enveloped(b"x", cert, enveloped.ContentCipher.AES_128_CBC)
    wrong_key = ec.generate_private_key(ec.SECP256R1())  # the same certificate, another key
    with pytest.raises(ProtocolError) as info:
        enveloped.decrypt_enveloped(sealed, [(cert, wrong_key)])
    assert (info.value.code, info.value.reason) == (ErrorCode.DECRYPTION_FAILED, errors.DECRYPTION_FAILED)
    value = asn1_cms.ContentInfo.load(sealed)
    rek = value["content"]["recipient_infos"][0].chosen["recipient_encrypted_keys"][0]
    rek["encrypted_key"] = bytes(b ^ 1 for b in rek["encrypted_key"].native)
    with pytest.raises(ProtocolError) as info:
        enveloped.decrypt_enveloped(value.dump(force=True), [(cert, key)])
    assert (info.value.code, info.value.reason) == (ErrorCode.DECRYPTION_FAILED, errors.DECRYPTION_FAILED)


def _opened_by_openssl_as_key_agreement(envelope: bytes, key, recipient: x509.Certificate, tmp_path) -> x509.Certificate:
    """The certificate inside a CertRep's envelope, which must be a KeyAgreeRecipientInfo
    (dhSinglePass-stdDH-sha256kdf, id-aes128-wrap for AES-128) that `openssl cms -decrypt`
    opens with `recipient` and its EC `key`."""
    info = asn1_cms.ContentInfo.load(envelope)["content"]["recipient_infos"][0]
    assert info.name == "kari"
    assert info.chosen["key_encryption_algorithm"]["algorithm"].dotted == "1.3.132.1.11.1"
    assert info.chosen["key_encryption_algorithm"]["parameters"]["algorithm"].native == "aes128_wrap"
    (tmp_path / "key.pem").write_bytes(_key_pem(key))
    (tmp_path / "recipient.pem").write_bytes(pem(recipient))
    out = _openssl("cms", "-decrypt", "-inform", "DER", "-inkey", str(tmp_path / "key.pem"),
                   "-recip", str(tmp_path / "recipient.pem"), input=envelope)
    assert out.returncode == 0, out.stderr.decode()
    return signed.parse_certs_only(out.stdout)[0]


def test_reply_to_an_ec_signer_is_a_key_agreement_openssl_opens(server, ca, tmp_path):
    """On the wire: a PKCSReq signed by an EC key gets a CertRep whose envelope is a
    KeyAgreeRecipientInfo (dhSinglePass-stdDH-sha256kdf, id-aes128-wrap for AES-128), which
    OpenSSL opens with the EC key."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer = self_signed(key, name("ec-wire"))
    csr = build_csr(key, name("ec-wire"), challenge=CHALLENGE).public_bytes(serialization.Encoding.DER)
    request = build_pki_message(message_type=MessageType.PKCS_REQ, transaction_id="T-ec-wire",
                                signer_certificate=signer, signer_key=key, digest_algorithm="sha256",
                                envelope=enveloped.build_enveloped(csr, ca.ra, enveloped.ContentCipher.AES_128_CBC))
    reply = parse_pki_message(_post(server, request).content, ca.all)
    assert reply.pki_status is PkiStatus.SUCCESS, reply.fail_info_text
    issued = _opened_by_openssl_as_key_agreement(reply.envelope, key, signer, tmp_path)
    assert issued.public_key().public_numbers() == key.public_key().public_numbers()


def test_reply_to_a_renewal_signed_by_an_issued_ec_certificate_is_a_key_agreement_openssl_opens(client, server, ca, tmp_path):
    """On the wire: a RenewalReq signed by an EC certificate this CA issued gets a CertRep
    whose envelope is a KeyAgreeRecipientInfo naming that certificate (the CA as issuer, its
    serial), which OpenSSL opens with the certificate and its EC key; inside, the renewed
    certificate for the new key."""
    old_key = ec.generate_private_key(ec.SECP256R1())
    enrolled = client.enroll(old_key, name("ec-renew-wire"), challenge=CHALLENGE, ca=ca)
    assert enrolled.status is PkiStatus.SUCCESS, enrolled.fail_info_text
    current = enrolled.certificate
    assert current.issuer == ca.ca.subject != current.subject
    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(new_key, name("ec-renew-wire")).public_bytes(serialization.Encoding.DER)
    request = build_pki_message(message_type=MessageType.RENEWAL_REQ, transaction_id="T-ec-renew-wire",
                                signer_certificate=current, signer_key=old_key, digest_algorithm="sha256",
                                envelope=enveloped.build_enveloped(csr, ca.ra, enveloped.ContentCipher.AES_128_CBC))
    reply = parse_pki_message(_post(server, request).content, ca.all)
    assert reply.is_verified and reply.pki_status is PkiStatus.SUCCESS, reply.fail_info_text
    info = asn1_cms.ContentInfo.load(reply.envelope)["content"]["recipient_infos"][0]
    rid = info.chosen["recipient_encrypted_keys"][0]["rid"].chosen
    assert (rid["issuer"].dump(), rid["serial_number"].native) == (
        asn1_x509.Name.load(current.issuer.public_bytes()).dump(), current.serial_number)
    renewed = _opened_by_openssl_as_key_agreement(reply.envelope, old_key, current, tmp_path)
    assert renewed.public_key().public_numbers() == new_key.public_key().public_numbers()
    assert renewed.subject == current.subject and renewed.serial_number != current.serial_number


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_ec_device_enrolls_then_renews_with_its_ec_certificate(client, ca_pem, tmp_path, curve):
    """Renewal of an EC device certificate: the RenewalReq is signed by the EC certificate,
    so the reply can only reach the device by key agreement (RecipientKeyNotRsa before)."""
    old_key = ec.generate_private_key(CURVES[curve]())
    first = client.enroll(old_key, name(f"ec-renew-{curve}"), challenge=CHALLENGE)
    assert first.status is PkiStatus.SUCCESS, first.fail_info_text
    new_key = ec.generate_private_key(CURVES[curve]())
    renewed = client.enroll(new_key, name(f"ec-renew-{curve}"), signer=(first.certificate, old_key), renewal=True)
    assert renewed.status is PkiStatus.SUCCESS, renewed.fail_info_text
    assert renewed.certificate.public_key().public_numbers() == new_key.public_key().public_numbers()
    assert renewed.certificate.serial_number != first.certificate.serial_number
    verified = openssl_verify(ca_pem, pem(renewed.certificate), tmp_path)
    assert verified.returncode == 0, verified.stderr


# --- decryption failures: one answer, whatever failed -----------------------------------------


def _altered_envelope(recipient: x509.Certificate, case: str, content: bytes = b"content " * 8) -> bytes:
    """An envelope to `recipient` that fails to open in the way `case` says. The cases that
    end with a content key we did not send use AES-GCM, whose tag check fails every time (CBC
    padding would pass by chance once in 256)."""
    with_known_key = case in ("bad-content-padding", "truncated-ciphertext")
    cipher = enveloped.ContentCipher.AES_192_CBC if with_known_key else enveloped.ContentCipher.AES_128_GCM
    value = asn1_cms.ContentInfo.load(enveloped.build_enveloped(content, recipient, cipher))
    envelope = value["content"]
    ktri = envelope["recipient_infos"][0].chosen
    eci = envelope["auth_encrypted_content_info" if cipher.is_gcm else "encrypted_content_info"]
    public_key = recipient.public_key()
    if case == "wrong-rsa-key":
        other = rsa.generate_private_key(65537, 2048).public_key()
        ktri["encrypted_key"] = other.encrypt(os.urandom(16), asym_padding.PKCS1v15())
    elif case == "bad-rsa-padding":
        ktri["encrypted_key"] = b"\x00" + os.urandom(public_key.key_size // 8 - 1)
    elif case == "wrong-key-length":
        ktri["encrypted_key"] = public_key.encrypt(os.urandom(24), asym_padding.PKCS1v15())
    elif case == "corrupt-ciphertext":
        ciphertext = bytearray(eci["encrypted_content"].native)
        ciphertext[3] ^= 0x40
        eci["encrypted_content"] = bytes(ciphertext)
    elif with_known_key:
        cek, iv = os.urandom(24), os.urandom(16)
        ktri["encrypted_key"] = public_key.encrypt(cek, asym_padding.PKCS1v15())
        eci["content_encryption_algorithm"]["parameters"] = iv
        encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
        # 32 bytes ending in 0x00: no PKCS #7 padding ends so.
        ciphertext = encryptor.update(b"x" * 31 + b"\x00") + encryptor.finalize()
        eci["encrypted_content"] = ciphertext if case == "bad-content-padding" else ciphertext[:-5]
    return value.dump(force=True)


DECRYPTION_CASES = ["wrong-rsa-key", "bad-rsa-padding", "wrong-key-length", "corrupt-ciphertext",
                    "bad-content-padding", "truncated-ciphertext"]


def test_decryption_failures_all_read_the_same(rsa_pair):
    cert, key = rsa_pair
    reasons = set()
    for case in DECRYPTION_CASES:
        with pytest.raises(ProtocolError) as info:
            enveloped.decrypt_enveloped(_altered_envelope(cert, case), [(cert, key)])
        assert (info.value.code, info.value.fail_info.rfc_name) == (ErrorCode.DECRYPTION_FAILED, "badMessageCheck"), case
        reasons.add(info.value.reason)
    assert reasons == {errors.DECRYPTION_FAILED}


def test_decryption_failures_over_http_all_read_the_same(server, ca):
    key = rsa.generate_private_key(65537, 2048)
    signer = self_signed(key, name("undecryptable"))
    texts = {}
    for case in DECRYPTION_CASES:
        request = build_pki_message(message_type=MessageType.PKCS_REQ, transaction_id=f"T-undecryptable-{case}",
                                    signer_certificate=signer, signer_key=key, digest_algorithm="sha256",
                                    envelope=_altered_envelope(ca.ra, case))
        reply = parse_pki_message(_post(server, request).content, ca.all)
        assert reply.is_verified and reply.pki_status is PkiStatus.FAILURE, case
        assert reply.fail_info.rfc_name == "badMessageCheck", case
        texts[case] = reply.fail_info_text
    assert len(set(texts.values())) == 1, texts
    assert texts["wrong-rsa-key"].startswith("DecryptionFailed")
