"""End to end over HTTP against a real `scepd serve`: what a device and an admin see."""

from __future__ import annotations

import base64
import json
import sqlite3
import time

import httpx
import pytest
from conftest import CHALLENGE, openssl_verify, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scepd.client import ScepClient, parse_san
from scepd.client.client import self_signed
from scepd.protocol import FailInfo, MessageType, PkiStatus, enveloped, signed
from scepd.protocol.message import build_pki_message, parse_pki_message


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def client(server):
    with ScepClient(server.url) as c:
        yield c


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- GetCACaps / GetCACert ----------------------------------------------------------------


def test_getcacaps_lists_one_capability_a_line_with_crlf(server):
    response = httpx.get(server.url, params={"operation": "GetCACaps"})
    assert response.status_code == 200
    assert response.content.endswith(b"\r\n")
    lines = response.content.decode().split("\r\n")[:-1]
    for cap in ("POSTPKIOperation", "Renewal", "SHA-1", "SHA-256", "SHA-512", "AES", "DES3", "SCEPStandard"):
        assert cap in lines


@pytest.mark.parametrize(
    "path", ["/scep", "/scep/pkiclient.exe", "/certsrv/mscep/mscep.dll", "/certsrv/mscep/mscep.dll/pkiclient.exe"]
)
def test_getcacert_on_every_path_returns_ra_and_ca(server, instance_dir, path):
    url = f"http://127.0.0.1:{server.port}{path}"
    # Apple sends its profile name and Cisco its trustpoint as `message`.
    response = httpx.get(url, params={"operation": "GetCACert", "message": "MyProfile"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-x509-ca-ra-cert"
    certs = signed.parse_certs_only(response.content)
    ca = x509.load_pem_x509_certificate((instance_dir / "ca.pem").read_bytes())
    ra = x509.load_pem_x509_certificate((instance_dir / "ra.pem").read_bytes())
    assert set(certs) == {ca, ra}


# --- enrollment matrix ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key_spec,cipher,digest,use_get",
    [
        ("rsa", "aes", "sha256", False),
        ("rsa", "des3", "sha1", True),
        ("ec", "aes", "sha256", True),
        ("ec", "des3", "sha1", False),
        ("rsa", "aes256", "sha512", False),
        ("rsa", "aes-gcm", "sha256", False),
        ("rsa", "des", "sha256", False),
    ],
)
def test_enroll_and_verify_with_openssl(client, ca_pem, tmp_path, key_spec, cipher, digest, use_get):
    key = rsa.generate_private_key(65537, 2048) if key_spec == "rsa" else ec.generate_private_key(ec.SECP256R1())
    cn = f"device-{key_spec}-{cipher}-{digest}-{'get' if use_get else 'post'}"
    result = client.enroll(key, name(cn), challenge=CHALLENGE, cipher=cipher, digest=digest, use_get=use_get)
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    cert = result.certificate
    assert cert.subject == name(cn)
    verified = openssl_verify(ca_pem, pem(cert), tmp_path)
    assert verified.returncode == 0, verified.stderr
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert cert.serial_number.bit_length() > 64


def test_reply_uses_the_clients_cipher(server, client, instance_dir):
    """Checked on the wire: the CertRep envelope is sealed with the cipher the request used."""
    ca = client.get_ca_certs()
    key = rsa.generate_private_key(65537, 2048)
    signer = _signer_for(key)
    for cipher in (enveloped.ContentCipher.AES_256_CBC, enveloped.ContentCipher.DES_EDE3_CBC, enveloped.ContentCipher.AES_128_GCM):
        body = _pkcsreq(ca, key, f"cipher-{cipher.value}", CHALLENGE, cipher=cipher, signer=signer)
        reply = parse_pki_message(_post(server, body).content, ca.all)
        assert reply.pki_status is PkiStatus.SUCCESS
        assert enveloped.decrypt_enveloped(reply.envelope, [signer]).cipher is cipher


def test_subject_alternative_names_of_every_kind_are_copied(client, ca_pem, tmp_path):
    sans = ["dns:host.example.com", "ip:192.0.2.7", "ip:2001:db8::1", "email:user@example.com",
            "uri:https://device.example/42", "upn:user@corp.example"]
    key = ec.generate_private_key(ec.SECP384R1())
    result = client.enroll(key, name("san-device"), sans=[parse_san(s) for s in sans], challenge=CHALLENGE)
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    got = result.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(got) == [parse_san(s) for s in sans]
    assert openssl_verify(ca_pem, pem(result.certificate), tmp_path).returncode == 0


def test_san_only_request_gets_a_critical_san(client):
    result = client.enroll(
        ec.generate_private_key(ec.SECP256R1()), x509.Name([]), sans=[parse_san("dns:only-san.example")], challenge=CHALLENGE
    )
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    assert result.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


# --- resends --------------------------------------------------------------------------------


def test_resent_pkcsreq_returns_the_same_certificate(client, instance_dir):
    key = rsa.generate_private_key(65537, 2048)
    ca = client.get_ca_certs()
    # A resend is the same request again: same transactionID, request and signer certificate.
    signer = (self_signed(key, name("resend")), key)
    first = client.enroll(key, name("resend"), challenge=CHALLENGE, ca=ca, transaction_id="RESEND-1", signer=signer)
    second = client.enroll(key, name("resend"), challenge=CHALLENGE, ca=ca, transaction_id="RESEND-1", signer=signer)
    assert first.status is second.status is PkiStatus.SUCCESS
    assert first.certificate == second.certificate
    with sqlite3.connect(instance_dir / "scepd.db") as db:
        rows = db.execute("select count(*) from certificates where transaction_id = 'RESEND-1'").fetchone()[0]
    assert rows == 1


def test_same_transaction_id_with_another_key_is_a_new_request(client):
    """Not a resend (another request, another signer): judged on its own, challenge and all,
    and never answered with the certificate of the first."""
    ca = client.get_ca_certs()
    first = client.enroll(rsa.generate_private_key(65537, 2048), name("tid-a"), challenge=CHALLENGE, ca=ca, transaction_id="TID-X")
    refused = client.enroll(rsa.generate_private_key(65537, 2048), name("tid-b"), challenge="wrong", ca=ca, transaction_id="TID-X")
    assert refused.status is PkiStatus.FAILURE
    assert refused.fail_info_text.startswith("ChallengePasswordIncorrect")
    key_b = rsa.generate_private_key(65537, 2048)
    second = client.enroll(key_b, name("tid-b"), challenge=CHALLENGE, ca=ca, transaction_id="TID-X")
    assert first.status is second.status is PkiStatus.SUCCESS
    assert second.certificate.serial_number != first.certificate.serial_number
    assert second.certificate.subject == name("tid-b")
    assert second.certificate.public_key() == key_b.public_key()


def _rows(instance_dir, transaction_id: str) -> int:
    with sqlite3.connect(instance_dir / "scepd.db") as db:
        return db.execute("select count(*) from certificates where transaction_id = ?", (transaction_id,)).fetchone()[0]


def test_same_transaction_id_and_request_with_another_signer_is_a_new_request(client, instance_dir):
    """The signer is part of what makes a resend: the same PKCS#10 bytes under the same
    transactionID, signed with another certificate of the same key, is a new request and gets
    a certificate of its own (a second serial, a second row), not the first one again."""
    from scepd.client import build_csr

    key = rsa.generate_private_key(65537, 2048)
    ca = client.get_ca_certs()
    # RSA PKCS#1 v1.5 signs deterministically: the client sends the same CSR bytes both times.
    csrs = {build_csr(key, name("resend-signer"), challenge=CHALLENGE).public_bytes(serialization.Encoding.DER) for _ in range(2)}
    assert len(csrs) == 1
    signer_a = (self_signed(key, name("resend-signer")), key)
    signer_b = (self_signed(key, name("resend-signer")), key)
    assert signer_a[0].serial_number != signer_b[0].serial_number
    first = client.enroll(key, name("resend-signer"), challenge=CHALLENGE, ca=ca, transaction_id="RESEND-SIGNER", signer=signer_a)
    second = client.enroll(key, name("resend-signer"), challenge=CHALLENGE, ca=ca, transaction_id="RESEND-SIGNER", signer=signer_b)
    assert first.status is second.status is PkiStatus.SUCCESS, second.fail_info_text
    assert second.certificate.serial_number != first.certificate.serial_number
    assert _rows(instance_dir, "RESEND-SIGNER") == 2


def test_same_transaction_id_and_signer_with_another_request_is_a_new_request(client, instance_dir):
    """The PKCS#10 request is part of what makes a resend: under the same transactionID and
    signer certificate, a request for another SAN gets a certificate with that SAN (a second
    serial, a second row), not the first certificate again."""
    key = rsa.generate_private_key(65537, 2048)
    ca = client.get_ca_certs()
    signer = (self_signed(key, name("resend-csr")), key)
    sans = {}
    for host in ("a.resend.example", "b.resend.example"):
        result = client.enroll(key, name("resend-csr"), sans=[x509.DNSName(host)], challenge=CHALLENGE, ca=ca,
                               transaction_id="RESEND-CSR", signer=signer)
        assert result.status is PkiStatus.SUCCESS, result.fail_info_text
        sans[host] = result.certificate
    first, second = sans["a.resend.example"], sans["b.resend.example"]
    assert second.serial_number != first.serial_number
    got = second.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(got) == [x509.DNSName("b.resend.example")]
    assert _rows(instance_dir, "RESEND-CSR") == 2


# --- challenges -----------------------------------------------------------------------------


def _refused(client, challenge, cn="refused", key=None):
    key = key or rsa.generate_private_key(65537, 2048)
    result = client.enroll(key, name(cn), challenge=challenge)
    assert result.status is PkiStatus.FAILURE
    return result


def test_wrong_and_missing_challenges_are_refused_by_name(client):
    wrong = _refused(client, "not-the-challenge")
    assert wrong.fail_info is FailInfo.BAD_REQUEST
    assert wrong.fail_info_text.startswith("ChallengePasswordIncorrect")
    missing = _refused(client, None)
    assert missing.fail_info_text.startswith("ChallengePasswordMissing")


def test_one_time_password_works_once(client, instance_dir):
    made = run_scepd("otp", "new", "--dir", str(instance_dir))
    assert made.returncode == 0, made.stderr
    password = made.stdout.strip()
    assert made.stdout == password + "\n" and len(password) == 32  # the password alone on stdout
    ok = client.enroll(rsa.generate_private_key(65537, 2048), name("otp-1"), challenge=password)
    assert ok.status is PkiStatus.SUCCESS, ok.fail_info_text
    again = _refused(client, password, "otp-2")
    assert again.fail_info_text.startswith("OneTimePasswordUsed")


def test_expired_one_time_password_says_expired(client, instance_dir):
    password = run_scepd("otp", "new", "--dir", str(instance_dir), "--validity", "1s").stdout.strip()
    time.sleep(1.5)
    result = _refused(client, password, "otp-late")
    assert result.fail_info_text.startswith("OneTimePasswordExpired")


def test_weak_key_is_refused_with_a_reason(client):
    weak = rsa.generate_private_key(65537, 1024)
    result = client.enroll(weak, name("weak"), challenge=CHALLENGE, signer=_signer_for(rsa.generate_private_key(65537, 2048)))
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info_text.startswith("KeyTooWeak")
    assert "1024" in result.fail_info_text and "2048" in result.fail_info_text


# --- hostile and broken input ---------------------------------------------------------------


def _signer_for(key):
    signer_key = key if isinstance(key, rsa.RSAPrivateKey) else rsa.generate_private_key(65537, 2048)
    return self_signed(signer_key, name("signer")), signer_key


def _pkcsreq(ca, key, cn, challenge, *, cipher=enveloped.ContentCipher.AES_128_CBC, signer=None) -> bytes:
    from scepd.client import build_csr

    csr = build_csr(key, name(cn), challenge=challenge)
    signer_cert, signer_key = signer or _signer_for(key)
    envelope = enveloped.build_enveloped(csr.public_bytes(serialization.Encoding.DER), ca.ra, cipher)
    return build_pki_message(
        message_type=MessageType.PKCS_REQ,
        transaction_id=f"T-{cn}",
        signer_certificate=signer_cert,
        signer_key=signer_key,
        digest_algorithm="sha256",
        envelope=envelope,
    )


def _post(server, body: bytes, headers=None) -> httpx.Response:
    return httpx.post(f"{server.url}?operation=PKIOperation", content=body, headers=headers or {})


def test_tampered_request_gets_badmessagecheck(server, client):
    ca = client.get_ca_certs()
    body = bytearray(_pkcsreq(ca, rsa.generate_private_key(65537, 2048), "tampered", CHALLENGE))
    # Flip a bit inside the encrypted content: the messageDigest no longer matches.
    body[len(body) // 3] ^= 0x01
    response = _post(server, bytes(body))
    if response.status_code == 400:  # the flip hit the structure: refused with a reason
        assert "MessageUndecodable" in response.text
        return
    reply = parse_pki_message(response.content, ca.all)
    assert reply.pki_status is PkiStatus.FAILURE
    assert reply.fail_info is FailInfo.BAD_MESSAGE_CHECK


def test_signature_by_another_key_gets_badmessagecheck(server, client):
    """The signer certificate swapped for another one: the SignerInfo no longer verifies."""
    ca = client.get_ca_certs()
    key = rsa.generate_private_key(65537, 2048)
    from scepd.client import build_csr

    envelope = enveloped.build_enveloped(
        build_csr(key, name("forged"), challenge=CHALLENGE).public_bytes(serialization.Encoding.DER), ca.ra,
        enveloped.ContentCipher.AES_128_CBC,
    )
    other = rsa.generate_private_key(65537, 2048)
    cert_of_key = self_signed(key, name("forged"))
    forged = build_pki_message(
        message_type=MessageType.PKCS_REQ, transaction_id="FORGED", signer_certificate=cert_of_key,
        signer_key=other, digest_algorithm="sha256", envelope=envelope,
    )
    reply = parse_pki_message(_post(server, forged).content, ca.all)
    assert reply.pki_status is PkiStatus.FAILURE
    assert reply.fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert reply.fail_info_text.startswith("MessageSignatureInvalid")
    assert reply.recipient_nonce is not None and reply.transaction_id == "FORGED"


@pytest.mark.parametrize("body", [b"garbage", b"\x30\x82\xff\xff\x00", b"\x30\x03\x02\x01\x00"])
def test_garbage_body_gets_400_with_a_reason(server, body):
    response = _post(server, body, {"Content-Type": "application/x-pki-message"})
    assert response.status_code == 400
    assert "MessageUndecodable" in response.text or "MessageMissing" in response.text
    assert "Remedy:" in response.text


def test_oversized_body_gets_413_and_query_414(server):
    response = _post(server, b"\x30" * 70_000)
    assert response.status_code == 413
    assert "RequestTooLarge" in response.text
    # httpx refuses URLs this long itself, so the request goes out through http.client.
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/scep?operation=PKIOperation&message=" + "A" * 70_000)
    response = connection.getresponse()
    assert response.status == 414
    assert b"RequestTooLarge" in response.read()
    connection.close()


def test_unknown_operation_and_missing_message_are_400(server):
    assert httpx.get(server.url, params={"operation": "Nope"}).status_code == 400
    assert httpx.get(server.url, params={"operation": "PKIOperation"}).status_code == 400


def test_get_tolerates_unescaped_plus_slash_and_line_breaks(server, client):
    """Apple and Cisco put base64 into the query as is, with %0A line breaks."""
    ca = client.get_ca_certs()
    key = rsa.generate_private_key(65537, 2048)
    for attempt in range(20):  # until the base64 holds both '+' and '/'
        body = _pkcsreq(ca, key, f"raw-get-{attempt}", CHALLENGE)
        encoded = base64.b64encode(body).decode()
        if "+" in encoded and "/" in encoded:
            break
    wrapped = "%0A".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    response = httpx.get(f"{server.url}?operation=PKIOperation&message={wrapped}")
    assert response.status_code == 200, response.text
    assert parse_pki_message(response.content, ca.all).pki_status is PkiStatus.SUCCESS


def test_post_without_content_type_is_accepted(server, client):
    """strongSwan 5.9 posts with no Content-Type."""
    ca = client.get_ca_certs()
    body = _pkcsreq(ca, rsa.generate_private_key(65537, 2048), "no-content-type", CHALLENGE)
    response = httpx.Client().send(httpx.Request("POST", f"{server.url}?operation=PKIOperation", content=body))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-pki-message"
    assert parse_pki_message(response.content, ca.all).pki_status is PkiStatus.SUCCESS


def test_a_certrep_sent_as_a_request_gets_a_failure(server, client):
    ca = client.get_ca_certs()
    signer_cert, signer_key = _signer_for(rsa.generate_private_key(65537, 2048))
    body = build_pki_message(
        message_type=MessageType.CERT_REP, transaction_id="REP-1", signer_certificate=signer_cert,
        signer_key=signer_key, digest_algorithm="sha256",
        envelope=enveloped.build_enveloped(b"\x30\x00", ca.ra, enveloped.ContentCipher.AES_128_CBC),
    )
    reply = parse_pki_message(_post(server, body).content, ca.all)
    assert reply.pki_status is PkiStatus.FAILURE
    assert reply.fail_info_text.startswith("MessageTypeUnsupported")


def test_every_issued_certificate_is_stored_and_failures_are_logged(server, client, instance_dir):
    result = client.enroll(rsa.generate_private_key(65537, 2048), name("stored"), challenge=CHALLENGE)
    serial = format(result.certificate.serial_number, "x")
    with sqlite3.connect(instance_dir / "scepd.db") as db:
        der = db.execute("select der from certificates where serial = ?", (serial,)).fetchone()[0]
    assert x509.load_der_x509_certificate(der) == result.certificate
    _refused(client, "wrong-for-log", "logged-failure")
    entries = [json.loads(line) for line in server.log_lines()]
    failures = [e for e in entries if e.get("code") == "ChallengePasswordIncorrect" and e.get("subject") == "CN=logged-failure"]
    assert failures, "the refused request is not in the log"
    entry = failures[-1]
    assert entry["transaction_id"] and entry["remedy"] and entry["fail_info"] == "badRequest"
    assert entry["client"] == "127.0.0.1"


def test_server_is_still_serving_after_all_of_the_above(server):
    assert server.alive()
    assert "Traceback" not in server.stderr_path.read_text()


def test_post_of_base64_is_accepted(server, client):
    """Some clients POST the pkiMessage base64-encoded rather than as DER."""
    ca = client.get_ca_certs()
    body = _pkcsreq(ca, rsa.generate_private_key(65537, 2048), "base64-post", CHALLENGE)
    response = _post(server, base64.b64encode(body), {"Content-Type": "application/x-pki-message"})
    assert response.status_code == 200
    assert parse_pki_message(response.content, ca.all).pki_status is PkiStatus.SUCCESS


def test_pkcsreq_signed_with_an_ec_key_gets_its_certificate_by_key_agreement(client, ca_pem, tmp_path):
    # Signed by the EC device key itself: the reply is encrypted back to it by ECDH (it was
    # refused as RecipientKeyNotRsa before the envelope could carry a KeyAgreeRecipientInfo).
    ec_key = ec.generate_private_key(ec.SECP256R1())
    result = client.enroll(ec_key, name("ec-signer"), challenge=CHALLENGE, signer=(self_signed(ec_key, name("ec-signer")), ec_key))
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    assert result.certificate.public_key().public_numbers() == ec_key.public_key().public_numbers()
    assert result.certificate.subject == name("ec-signer")
    verify = openssl_verify(ca_pem, pem(result.certificate), tmp_path)
    assert verify.returncode == 0, verify.stderr


def test_unusable_algorithms_get_badalg(client):
    # A curve the template does not accept.
    p521 = ec.generate_private_key(ec.SECP521R1())
    result = client.enroll(p521, name("p521"), challenge=CHALLENGE)
    assert result.status is PkiStatus.FAILURE and result.fail_info is FailInfo.BAD_ALG
    assert result.fail_info_text.startswith("KeyTypeNotAllowed") and "secp521r1" in result.fail_info_text
