"""Renewals and resends as an attacker would try them (issue 10, items 2, 3 and 4), over HTTP
with the project's client and strongSwan's `pki`.

- A request is a resend only when its transactionID, message type, request and signer are the
  ones stored; a same-key renewal repeats the transactionID and must get a new certificate.
- A certificate that was revoked or has expired is never handed out again as a SUCCESS.
- A renewal authenticated only by the old certificate gets no more than that certificate held.
- No challenge password is stored or told to webhooks; MD5, single DES and impostor subjects
  meet the algorithm and subject policy.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import uuid

import pytest
from conftest import CHALLENGE, RunningServer, name, new_key, openssl_verify, pem, require_tool, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scepd.client import ScepClient, parse_san
from scepd.client.client import self_signed
from scepd.protocol import PkiStatus
from scepd.registry.config import update_config_file
from scepd.registry.instance import create_instance

SIGN_ONLY = x509.KeyUsage(True, False, False, False, False, False, False, False, False)


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("renewal-rules")
    create_instance(d, ca_subject="CN=Renewal Rules CA,O=scepd tests", key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {
        "templates": {"SignOnly": {"key_usage": ["digitalSignature"], "extended_key_usage": ["clientAuth"]}},
        "template_mapping": {"SignatureTemplate": "SignOnly"},
        "notifications": {"webhooks": ["http://127.0.0.1:9/unreachable"]},  # queued, never delivered here
    })
    return d


@pytest.fixture(scope="module")
def srv(rules_dir):
    server = RunningServer(rules_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(srv):
    with ScepClient(srv.url) as c:
        yield c


def scepd(*args, directory):
    return run_scepd(*args, "--dir", str(directory))


def enroll(client, cn, *, key=None, sans=(), transaction_id=None, key_usage=None):
    key = key or new_key()
    result = client.enroll(key, name(cn), sans=[parse_san(s) for s in sans], challenge=CHALLENGE,
                           transaction_id=transaction_id, key_usage=key_usage)
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    return result.certificate, key


def sans_of(cert) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.value for n in ext]


# --- 2. a repeated transactionID --------------------------------------------------------------


def test_same_key_renewal_under_the_enrollment_transaction_id_gets_a_new_certificate(client, rules_dir, tmp_path):
    old, key = enroll(client, "same-key", transaction_id="SAME-KEY-TID")
    renewed = client.enroll(key, name("same-key"), signer=(old, key), renewal=True, transaction_id="SAME-KEY-TID")
    assert renewed.status is PkiStatus.SUCCESS, renewed.fail_info_text
    assert renewed.certificate.serial_number != old.serial_number
    assert renewed.certificate.public_key() == key.public_key()
    assert openssl_verify(rules_dir / "ca.pem", pem(renewed.certificate), tmp_path).returncode == 0
    shown = json.loads(scepd("certs", "show", format(renewed.certificate.serial_number, "x"),
                             directory=rules_dir).stdout)
    assert shown["renewal_of"] == format(old.serial_number, "x")


@pytest.mark.parametrize("curve", [ec.SECP256R1, ec.SECP384R1])
def test_ec_same_key_renewal_under_the_enrollment_transaction_id(client, rules_dir, tmp_path, curve):
    """The RenewalReq is signed by the EC certificate itself: the reply reaches the device by
    ECDH key agreement."""
    key = ec.generate_private_key(curve())
    first = client.enroll(key, name(f"ec-same-{curve.name}"), challenge=CHALLENGE, transaction_id=f"EC-SAME-{curve.name}")
    assert first.status is PkiStatus.SUCCESS, first.fail_info_text
    renewed = client.enroll(key, name(f"ec-same-{curve.name}"), signer=(first.certificate, key), renewal=True,
                            transaction_id=f"EC-SAME-{curve.name}")
    assert renewed.status is PkiStatus.SUCCESS, renewed.fail_info_text
    assert renewed.certificate.serial_number != first.certificate.serial_number
    assert renewed.certificate.public_key() == key.public_key()
    assert openssl_verify(rules_dir / "ca.pem", pem(renewed.certificate), tmp_path).returncode == 0


def test_an_ec_certificate_renews_with_a_new_rsa_key(client, rules_dir, tmp_path):
    """Another key type is a new key, not a wider identity, though an RSA key gets the
    keyEncipherment an EC key cannot have (found trying the README's renewal on an EC device)."""
    key = ec.generate_private_key(ec.SECP256R1())
    first = client.enroll(key, name("ec-to-rsa"), challenge=CHALLENGE)
    assert first.status is PkiStatus.SUCCESS, first.fail_info_text
    rsa_key = new_key()
    renewed = client.enroll(rsa_key, name("ec-to-rsa"), signer=(first.certificate, key), renewal=True)
    assert renewed.status is PkiStatus.SUCCESS, renewed.fail_info_text
    assert renewed.certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert openssl_verify(rules_dir / "ca.pem", pem(renewed.certificate), tmp_path).returncode == 0


def test_renewal_signed_by_a_revoked_certificate_never_gets_it_back(client, rules_dir):
    """The defect: RenewalReq under the enrollment's transactionID, signed by a certificate
    revoked for keyCompromise, was answered SUCCESS with that revoked certificate."""
    old, key = enroll(client, "compromised", transaction_id="COMPROMISED-TID")
    revoked = scepd("certs", "revoke", format(old.serial_number, "x"), "--reason", "keyCompromise", directory=rules_dir)
    assert revoked.returncode == 0, revoked.stderr
    renewal = client.enroll(key, name("compromised"), signer=(old, key), renewal=True, transaction_id="COMPROMISED-TID")
    assert renewal.status is PkiStatus.FAILURE
    assert renewal.fail_info_text.startswith("SignerCertificateRevoked"), renewal.fail_info_text
    assert renewal.certificate is None


def test_resend_of_a_request_whose_certificate_was_revoked_is_refused(client, rules_dir):
    key = new_key()
    signer = (self_signed(key, name("resend-revoked")), key)
    first = client.enroll(key, name("resend-revoked"), challenge=CHALLENGE, signer=signer, transaction_id="RESEND-REVOKED")
    assert first.status is PkiStatus.SUCCESS
    again = client.enroll(key, name("resend-revoked"), challenge=CHALLENGE, signer=signer, transaction_id="RESEND-REVOKED")
    assert again.status is PkiStatus.SUCCESS and again.certificate == first.certificate  # a resend
    scepd("certs", "revoke", format(first.certificate.serial_number, "x"), "--reason", "keyCompromise", directory=rules_dir)
    after = client.enroll(key, name("resend-revoked"), challenge=CHALLENGE, signer=signer, transaction_id="RESEND-REVOKED")
    assert after.status is PkiStatus.FAILURE
    assert after.fail_info_text.startswith("IssuedCertificateRevoked"), after.fail_info_text


@pytest.fixture
def strongswan(srv, tmp_path):
    """`pki` in a work directory holding the server's CA and RA, and the enrollment options."""
    require_tool("pki")

    def pki(*args):
        return subprocess.run(["pki", *args], cwd=tmp_path, capture_output=True, timeout=120)

    fetched = pki("--scepca", "--url", srv.url, "--caout", "ca.pem", "--raout", "ra.pem", "--outform", "pem")
    assert fetched.returncode == 0, fetched.stderr.decode()
    for k in ("old.key", "new.key"):
        (tmp_path / k).write_bytes(pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "pem").stdout)
    options = ["--url", srv.url, "--cacert-enc", "ra.pem", "--cacert-sig", "ca.pem", "--cipher", "des3", "--outform", "pem"]
    return pki, options, tmp_path


def test_strongswan_same_key_renewal_gets_a_new_serial(strongswan, rules_dir):
    """strongSwan derives the transactionID from the public key, so its renewal for the same
    key repeats the enrollment's ID."""
    pki, options, work = strongswan
    first = pki("--scep", "--in", "old.key", "--dn", "CN=strongswan-renew", "--password", CHALLENGE, *options)
    assert first.returncode == 0, first.stderr.decode()
    (work / "old.pem").write_bytes(first.stdout)
    renewed = pki("--scep", "--in", "old.key", "--dn", "CN=strongswan-renew", "--cert", "old.pem", "--key", "old.key", *options)
    assert renewed.returncode == 0, renewed.stderr.decode()
    (work / "new.pem").write_bytes(renewed.stdout)
    old_cert = x509.load_pem_x509_certificate(first.stdout)
    new_cert = x509.load_pem_x509_certificate(renewed.stdout)
    assert new_cert.serial_number != old_cert.serial_number
    assert new_cert.public_key() == old_cert.public_key()
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(rules_dir / "ca.pem"), str(work / "new.pem")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    # The same transactionID twice in the store, two requests.
    with sqlite3.connect(rules_dir / "scepd.db") as db:
        rows = db.execute("select transaction_id, message_type from transactions where subject = 'CN=strongswan-renew'"
                          " order by id").fetchall()
    assert [r[1] for r in rows] == ["PKCS_REQ", "RENEWAL_REQ"]
    assert rows[0][0] == rows[1][0]


def test_strongswan_new_key_renewal(strongswan):
    pki, options, work = strongswan
    first = pki("--scep", "--in", "old.key", "--dn", "CN=strongswan-rekey", "--password", CHALLENGE, *options)
    assert first.returncode == 0, first.stderr.decode()
    (work / "old.pem").write_bytes(first.stdout)
    renewed = pki("--scep", "--in", "new.key", "--dn", "CN=strongswan-rekey", "--cert", "old.pem", "--key", "old.key", *options)
    assert renewed.returncode == 0, renewed.stderr.decode()
    new_cert = x509.load_pem_x509_certificate(renewed.stdout)
    new_key = serialization.load_pem_private_key((work / "new.key").read_bytes(), None)
    assert new_cert.public_key() == new_key.public_key()
    assert new_cert.serial_number != x509.load_pem_x509_certificate(first.stdout).serial_number


# --- 3. renewal must not widen an identity ---------------------------------------------------


@pytest.mark.parametrize("extra", ["dns:admin.bank.example", "dns:*.corp.example"])
def test_renewal_asking_for_new_sans_without_a_challenge_is_refused(client, extra):
    old, key = enroll(client, "widen", sans=["dns:widen.example"])
    result = client.enroll(new_key(), name("widen"), sans=[parse_san("dns:widen.example"), parse_san(extra)],
                           signer=(old, key), renewal=True)
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info_text.startswith("RenewalWidensIdentity"), result.fail_info_text
    assert extra.split(":", 1)[1] in result.fail_info_text


def test_pkcsreq_signed_by_our_certificate_cannot_widen_either(client):
    old, key = enroll(client, "widen-pkcsreq", sans=["dns:w.example"])
    result = client.enroll(new_key(), name("widen-pkcsreq"), sans=[parse_san("dns:admin.bank.example")], signer=(old, key))
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info_text.startswith("RenewalWidensIdentity"), result.fail_info_text


def test_renewal_with_the_same_or_fewer_sans_needs_no_challenge(client):
    old, key = enroll(client, "narrow", sans=["dns:a.narrow.example", "dns:b.narrow.example"])
    same = client.enroll(new_key(), name("narrow"), sans=[parse_san("dns:b.narrow.example"), parse_san("dns:a.narrow.example")],
                         signer=(old, key), renewal=True)
    assert same.status is PkiStatus.SUCCESS, same.fail_info_text
    fewer = client.enroll(new_key(), name("narrow"), sans=[parse_san("dns:a.narrow.example")], signer=(old, key), renewal=True)
    assert fewer.status is PkiStatus.SUCCESS, fewer.fail_info_text
    assert sans_of(fewer.certificate) == ["a.narrow.example"]


def test_a_widening_renewal_passes_the_registration_point_like_a_first_enrollment(client):
    old, key = enroll(client, "widen-rp", sans=["dns:rp.example"])
    wider = [parse_san("dns:rp.example"), parse_san("dns:more.rp.example")]
    wrong = client.enroll(new_key(), name("widen-rp"), sans=wider, challenge="not-the-challenge", signer=(old, key), renewal=True)
    assert wrong.status is PkiStatus.FAILURE
    assert wrong.fail_info_text.startswith("ChallengePasswordIncorrect"), wrong.fail_info_text
    allowed = client.enroll(new_key(), name("widen-rp"), sans=wider, challenge=CHALLENGE, signer=(old, key), renewal=True)
    assert allowed.status is PkiStatus.SUCCESS, allowed.fail_info_text
    assert sorted(sans_of(allowed.certificate)) == ["more.rp.example", "rp.example"]


def test_renewal_into_a_template_with_more_usages_is_a_widening(client):
    """The old certificate is sign-only (SignOnly, by NDES's mapping); a renewal without key
    usage maps to the general-purpose template, which adds keyEncipherment and an EKU."""
    old, key = enroll(client, "ku-widen", key_usage=SIGN_ONLY)
    result = client.enroll(new_key(), name("ku-widen"), signer=(old, key), renewal=True)
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info_text.startswith("RenewalWidensIdentity"), result.fail_info_text
    assert "template IPSECIntermediateOffline" in result.fail_info_text
    same = client.enroll(new_key(), name("ku-widen"), signer=(old, key), renewal=True, key_usage=SIGN_ONLY)
    assert same.status is PkiStatus.SUCCESS, same.fail_info_text


@pytest.mark.parametrize("grants, widening", [
    ({"key_usage": ["digitalSignature", "keyEncipherment"]}, "key usage keyEncipherment"),
    ({"extended_key_usage": ["clientAuth", "serverAuth"]}, "extended key usage 1.3.6.1.5.5.7.3.1"),
])
def test_a_template_changed_to_grant_more_does_not_widen_a_renewal(tmp_path, grants, widening):
    """The same template, edited after the old certificate was issued to grant another key
    usage or EKU: a renewal signed by the old certificate alone does not get it."""
    d = tmp_path / "instance"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    sign_only = {"key_usage": ["digitalSignature"], "extended_key_usage": ["clientAuth"]}
    update_config_file(d / "scepd.toml", {"templates": {"SignOnly": sign_only},
                                          "template_mapping": {"SignatureTemplate": "SignOnly"}})
    server = RunningServer(d)
    try:
        with ScepClient(server.url) as c:
            old, key = enroll(c, "edited-template", key_usage=SIGN_ONLY)
    finally:
        server.stop()
    update_config_file(d / "scepd.toml", {"templates": {"SignOnly": {**sign_only, **grants}}})
    server = RunningServer(d)
    try:
        with ScepClient(server.url) as c:
            renewed = c.enroll(new_key(), name("edited-template"), signer=(old, key), renewal=True, key_usage=SIGN_ONLY)
            assert renewed.status is PkiStatus.FAILURE
            assert renewed.fail_info_text.startswith("RenewalWidensIdentity"), renewed.fail_info_text
            assert widening in renewed.fail_info_text
            # With the challenge the registration point decides, as for a first enrollment.
            allowed = c.enroll(new_key(), name("edited-template"), signer=(old, key), renewal=True,
                               key_usage=SIGN_ONLY, challenge=CHALLENGE)
            assert allowed.status is PkiStatus.SUCCESS, allowed.fail_info_text
    finally:
        server.stop()


# --- 4. secrets and the algorithm and subject policy -------------------------------------------


def test_no_challenge_password_is_stored_or_notified(client, rules_dir):
    cert, _ = enroll(client, "no-secret-stored")
    with sqlite3.connect(rules_dir / "scepd.db") as db:
        stored = db.execute("select csr_der from transactions where subject = 'CN=no-secret-stored'").fetchone()[0]
        payloads = [row[0] for row in db.execute(
            "select payload from notifications where transaction_id in "
            "(select transaction_id from transactions where subject = 'CN=no-secret-stored')")]
    assert CHALLENGE.encode() not in stored
    csr = x509.load_der_x509_csr(stored)
    assert csr.subject == name("no-secret-stored")
    assert payloads
    for payload in payloads:
        assert CHALLENGE not in payload
        request = json.loads(payload).get("certificateRequest")
        if request:
            assert CHALLENGE.encode() not in base64.b64decode(request)
    # The raw database file holds no copy either (WAL included).
    for path in rules_dir.glob("scepd.db*"):
        assert CHALLENGE.encode() not in path.read_bytes(), path


def test_md5_signed_pki_message_is_refused(client):
    result = client.enroll(new_key(), name("md5-message"), challenge=CHALLENGE, digest="md5")
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info_text.startswith("AlgorithmRefused"), result.fail_info_text


def test_single_des_is_accepted_logged_as_weak_and_refusable(srv, client, rules_dir, tmp_path):
    result = client.enroll(new_key(), name("des-client"), challenge=CHALLENGE, cipher="des")
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    weak = [line for line in srv.log_lines() if "weak cipher" in line and result.transaction_id in line]
    assert len(weak) == 1 and "127.0.0.1" in weak[0]  # the client and the transaction named, once

    d = tmp_path / "no-des"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    server = RunningServer(d, env={"SCEPD_SCEP_ALLOW_DES": "false"})
    try:
        with ScepClient(server.url) as strict:
            refused = strict.enroll(new_key(), name("des-client"), challenge=CHALLENGE, cipher="des")
            assert refused.status is PkiStatus.FAILURE
            assert refused.fail_info_text.startswith("AlgorithmRefused"), refused.fail_info_text
            still = strict.enroll(new_key(), name("aes-client"), challenge=CHALLENGE, cipher="aes")
            assert still.status is PkiStatus.SUCCESS
    finally:
        server.stop()


@pytest.mark.parametrize("cn", ["evil\x1b]0;owned\x07", "line\nbreak", "bidi\u202eexe.txt"])
def test_subjects_with_control_characters_are_refused(client, cn):
    result = client.enroll(new_key(), name(cn), challenge=CHALLENGE)
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info_text.startswith("SubjectInvalid"), result.fail_info_text


def test_a_subject_equal_to_the_ca_is_refused(client, rules_dir):
    ca = x509.load_pem_x509_certificate((rules_dir / "ca.pem").read_bytes())
    result = client.enroll(new_key(), ca.subject, challenge=CHALLENGE)
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info_text.startswith("SubjectInvalid"), result.fail_info_text


def test_md5_signed_pkcs10_request_is_refused(client, tmp_path):
    """cryptography no longer signs with MD5, so OpenSSL makes the request (an old device's)."""
    key = new_key()
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "req.cnf").write_text(
        f"[req]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n[dn]\nCN = md5-csr\n"
        f"[attrs]\nchallengePassword = {CHALLENGE}\n")
    made = subprocess.run(["openssl", "req", "-new", "-md5", "-key", "key.pem", "-config", "req.cnf", "-outform", "DER",
                           "-out", "md5.der"], cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    from scepd.client.client import CIPHERS, _Exchange
    from scepd.protocol import MessageType

    exchange = _Exchange(client, client.get_ca_certs(), (self_signed(key, name("md5-csr")), key), CIPHERS["aes"],
                         "sha256", False, "MD5-CSR")
    reply = exchange.send(MessageType.PKCS_REQ, (tmp_path / "md5.der").read_bytes())
    assert reply.pki_status is PkiStatus.FAILURE
    assert reply.fail_info_text.startswith("AlgorithmRefused"), reply.fail_info_text
    assert "PKCS#10" in reply.fail_info_text


@pytest.mark.parametrize("first_key, renewal_key, same_key", [
    ("rsa:2048", ["--key-in", "{old_key}"], True),
    ("rsa:2048", ["--key", "rsa:2048"], False),
    ("ec:p256", ["--key-in", "{old_key}"], True),
    ("ec:p256", ["--key", "ec:p256"], False),
    ("ec:p256", [], False),  # the default new key, RSA: another key type is a new key, not a wider identity
], ids=["rsa-same-key", "rsa-new-key", "ec-same-key", "ec-new-key", "ec-to-rsa"])
def test_the_cli_renews_keeping_subject_and_sans(srv, rules_dir, tmp_path, first_key, renewal_key, same_key):
    """`scepd client enroll --renew-cert --renew-key` as the operations guide shows it, with RSA
    and EC device keys, keeping the key or not: the subject and SANs carry over, no challenge
    needed, and the certificate is new."""
    cn = f"cli-renew-{uuid.uuid4().hex[:8]}"
    first = run_scepd("client", "enroll", srv.url, "--subject", f"CN={cn}", "--san", f"dns:{cn}.example",
                      "--challenge", CHALLENGE, "--key", first_key, "--cert-out", str(tmp_path / "old.pem"))
    assert first.returncode == 0, first.stderr
    key_options = [option.format(old_key=tmp_path / "old.key") for option in renewal_key]
    renewed = run_scepd("client", "enroll", srv.url, "--renew-cert", str(tmp_path / "old.pem"),
                        "--renew-key", str(tmp_path / "old.key"), *key_options, "--cert-out", str(tmp_path / "new.pem"))
    assert renewed.returncode == 0, renewed.stderr
    old = x509.load_pem_x509_certificate((tmp_path / "old.pem").read_bytes())
    new = x509.load_pem_x509_certificate((tmp_path / "new.pem").read_bytes())
    assert new.subject == old.subject and new.serial_number != old.serial_number
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert (new.public_key().public_bytes(*spki) == old.public_key().public_bytes(*spki)) is same_key
    assert sans_of(new) == [f"{cn}.example"]
    assert openssl_verify(rules_dir / "ca.pem", pem(new), tmp_path).returncode == 0
