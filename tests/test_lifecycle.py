"""The rest of RFC 8894 and a real CA, end to end over HTTP: templates and the NDES mapping,
renewal, manual approval with polling, GetCert and GetCRL, revocation with CRLs, CA rollover
and RA renewal. With the project's client and, where it can, strongSwan."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import httpx
import pytest
from conftest import (
    CHALLENGE,
    SCEPD,
    RunningServer,
    free_port,
    name,
    new_key,
    openssl_verify,
    pem,
    require_tool,
    run_scepd,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from scepd.protocol.names import EKU_NAMES
from scepd.client import ScepClient, ScepClientError
from scepd.client.client import self_signed
from scepd.protocol import FailInfo, MessageType, PkiStatus, enveloped, signed
from scepd.protocol.message import (
    build_pki_message,
    encode_issuer_and_subject,
    parse_pki_message,
)
from scepd.registry.config import update_config_file
from scepd.registry.instance import create_instance

SIGN_ONLY = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
ENCRYPT_ONLY = x509.KeyUsage(False, False, True, False, False, False, False, False, False)


@pytest.fixture(scope="module")
def lifecycle_dir(tmp_path_factory):
    """An instance with three templates: NDES's mapping sends signature-only requests to
    SignOnly (renewal revokes the old certificate), encryption-only requests to Manual
    (approval by an administrator), everything else to the built-in default."""
    d = tmp_path_factory.mktemp("lifecycle")
    create_instance(d, ca_subject="CN=Lifecycle CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(
        d / "scepd.toml",
        {
            "templates": {
                "SignOnly": {"key_usage": ["digitalSignature"], "extended_key_usage": ["clientAuth"], "revoke_on_renewal": True},
                "Manual": {"approval": "manual"},
            },
            "template_mapping": {"SignatureTemplate": "SignOnly", "EncryptionTemplate": "Manual"},
        },
    )
    return d


@pytest.fixture(scope="module")
def srv(lifecycle_dir):
    server = RunningServer(lifecycle_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(srv):
    with ScepClient(srv.url) as c:
        yield c


def scepd(*args, directory) -> subprocess.CompletedProcess:
    return run_scepd(*args, "--dir", str(directory))


def enroll_signonly(client, cn):
    key = new_key()
    result = client.enroll(key, name(cn), challenge=CHALLENGE, key_usage=SIGN_ONLY)
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    return result.certificate, key


# --- templates and the NDES mapping ---------------------------------------------------------


def test_requested_key_usage_selects_the_ndes_template(client, lifecycle_dir):
    cert, _ = enroll_signonly(client, "sign-only")
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_encipherment
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    general = client.enroll(new_key(), name("general"), challenge=CHALLENGE)  # no key usage: GeneralPurpose
    assert general.status is PkiStatus.SUCCESS
    eku = list(general.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == [EKU_NAMES["ipsecIKEIntermediate"], ExtendedKeyUsageOID.CLIENT_AUTH]  # IPSECIntermediateOffline

    listing = json.loads(scepd("templates", "list", "--json", directory=lifecycle_dir).stdout)
    mapped = {row["name"]: row["mapped_as"] for row in listing}
    assert mapped == {"IPSECIntermediateOffline": "GeneralPurposeTemplate", "Manual": "EncryptionTemplate",
                      "SignOnly": "SignatureTemplate"}
    shown = json.loads(scepd("templates", "show", "Manual", "--json", directory=lifecycle_dir).stdout)
    assert shown["approval"] == "manual"


def test_mapping_to_a_missing_template_stops_serve_and_reset_mapping_mends_it(tmp_path):
    d = tmp_path / "badmap"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"template_mapping": {"EncryptionTemplate": "Gone"}})
    refused = run_scepd("serve", "--dir", str(d), "--port", str(free_port()), timeout=30)
    assert refused.returncode == 2
    assert "EncryptionTemplate names 'Gone'" in refused.stderr
    assert "scepd templates reset-mapping" in refused.stderr
    assert run_scepd("templates", "reset-mapping", "--dir", str(d)).returncode == 0
    server = RunningServer(d)
    try:
        with ScepClient(server.url) as c:
            ok = c.enroll(new_key(), name("after-reset"), challenge=CHALLENGE, key_usage=ENCRYPT_ONLY)
        assert ok.status is PkiStatus.SUCCESS, ok.fail_info_text
    finally:
        server.stop()


# --- manual approval and polling --------------------------------------------------------------


def _pending_ids(directory) -> list[str]:
    rows = json.loads(scepd("requests", "list", "--status", "pending", "--json", directory=directory).stdout)
    return [row["transaction_id"] for row in rows]


def _wait_for_pending(directory, subject: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = json.loads(scepd("requests", "list", "--status", "pending", "--json", directory=directory).stdout)
        for row in rows:
            if row["subject"] == subject:
                return row["transaction_id"]
        time.sleep(0.3)
    raise AssertionError(f"no pending request for {subject}")


def test_manual_approval_collected_by_polling_with_the_project_client(srv, lifecycle_dir, tmp_path):
    out = tmp_path / "manual.pem"
    polling = subprocess.Popen(
        [*SCEPD, "client", "enroll", srv.url, "--subject", "CN=manual-device",
         "--challenge", CHALLENGE, "--key-usage", "keyEncipherment", "--poll-interval", "0.5",
         "--max-poll-time", "60", "--cert-out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    tid = _wait_for_pending(lifecycle_dir, "CN=manual-device")
    approved = scepd("requests", "approve", tid, directory=lifecycle_dir)
    assert approved.returncode == 0, approved.stderr
    _, stderr = polling.communicate(timeout=60)
    assert polling.returncode == 0, stderr
    assert openssl_verify(lifecycle_dir / "ca.pem", out.read_bytes(), tmp_path).returncode == 0
    shown = json.loads(scepd("requests", "show", tid, directory=lifecycle_dir).stdout)
    assert shown["status"] == "issued" and shown["serial"]
    # Approving twice is refused, not a second certificate.
    again = scepd("requests", "approve", tid, directory=lifecycle_dir)
    assert again.returncode == 2 and "not pending" in again.stderr


def test_denied_request_answers_the_poll_with_the_reason(client, lifecycle_dir):
    outcome = {}
    key = new_key()

    def enroll():
        outcome["result"] = client.enroll(key, name("to-deny"), challenge=CHALLENGE, key_usage=ENCRYPT_ONLY,
                                          poll_interval=0.3, max_poll_time=60)

    worker = threading.Thread(target=enroll)
    worker.start()
    tid = _wait_for_pending(lifecycle_dir, "CN=to-deny")
    assert scepd("requests", "deny", tid, "--reason", "unknown device", directory=lifecycle_dir).returncode == 0
    worker.join(60)
    result = outcome["result"]
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info is FailInfo.BAD_REQUEST
    assert result.fail_info_text == "RequestDenied: unknown device"


def test_pending_without_polling_exits_3(srv, tmp_path):
    result = run_scepd("client", "enroll", srv.url, "--subject", "CN=just-pending", "--challenge", CHALLENGE,
                       "--key-usage", "keyEncipherment", "--cert-out", str(tmp_path / "p.pem"))
    assert result.returncode == 3
    assert "pending" in result.stderr


def _certpoll(client, signer, transaction_id):
    ca = client.get_ca_certs()
    body = build_pki_message(
        message_type=MessageType.CERT_POLL, transaction_id=transaction_id, signer_certificate=signer[0],
        signer_key=signer[1], digest_algorithm="sha256",
        envelope=enveloped.build_enveloped(encode_issuer_and_subject(ca.ca.subject, name("x")), ca.ra, enveloped.ContentCipher.AES_128_CBC),
    )
    response = httpx.post(f"{client.url}?operation=PKIOperation", content=body)
    return parse_pki_message(response.content, ca.all)


def test_certpoll_for_an_unknown_transaction_is_badcertid(client):
    key = new_key()
    reply = _certpoll(client, (self_signed(key, name("poller")), key), "NO-SUCH-TRANSACTION")
    assert reply.pki_status is PkiStatus.FAILURE
    assert reply.fail_info is FailInfo.BAD_CERT_ID
    assert reply.fail_info_text.startswith("TransactionUnknown")


def test_certpoll_signed_by_another_key_is_refused(client):
    key = new_key()
    pending = client.enroll(key, name("poll-owner"), challenge=CHALLENGE, key_usage=ENCRYPT_ONLY)
    assert pending.status is PkiStatus.PENDING
    stranger = new_key()
    reply = _certpoll(client, (self_signed(stranger, name("stranger")), stranger), pending.transaction_id)
    assert reply.pki_status is PkiStatus.FAILURE
    assert reply.fail_info_text.startswith("PollSignerMismatch")


def test_strongswan_polls_until_approved(lifecycle_dir, tmp_path):
    require_tool("pki")
    # A second server on the same instance, where strongSwan's request (it asks for no key
    # usage, so GeneralPurposeTemplate) needs approval.
    server = RunningServer(lifecycle_dir, env={"SCEPD_TEMPLATE_MAPPING_GENERALPURPOSETEMPLATE": "Manual"})
    try:
        fetched = subprocess.run(["pki", "--scepca", "--url", server.url, "--caout", "ca.pem", "--raout", "ra.pem",
                                  "--outform", "pem"], cwd=tmp_path, capture_output=True)
        assert fetched.returncode == 0, fetched.stderr
        key = subprocess.run(["pki", "--gen", "--type", "rsa", "--size", "2048", "--outform", "pem"],
                             capture_output=True, check=True).stdout
        (tmp_path / "key.pem").write_bytes(key)
        polling = subprocess.Popen(
            ["pki", "--scep", "--url", server.url, "--in", "key.pem", "--dn", "CN=strongswan-pending",
             "--password", CHALLENGE, "--cacert-enc", "ra.pem", "--cacert-sig", "ca.pem", "--cipher", "des3",
             "--interval", "1", "--maxpolltime", "60", "--outform", "pem"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        tid = _wait_for_pending(lifecycle_dir, "CN=strongswan-pending")
        assert scepd("requests", "approve", tid, directory=lifecycle_dir).returncode == 0
        cert, stderr = polling.communicate(timeout=90)
        assert polling.returncode == 0, stderr.decode()
        assert openssl_verify(lifecycle_dir / "ca.pem", cert, tmp_path).returncode == 0
    finally:
        server.stop()


# --- renewal ---------------------------------------------------------------------------------


def test_renewalreq_signed_by_our_certificate_needs_no_challenge_and_supersedes(client, srv, lifecycle_dir, tmp_path):
    old, old_key = enroll_signonly(client, "renew-me")
    fresh = new_key()
    renewed = client.enroll(fresh, name("renew-me"), signer=(old, old_key), renewal=True, key_usage=SIGN_ONLY)
    assert renewed.status is PkiStatus.SUCCESS, renewed.fail_info_text
    assert renewed.certificate.public_key().public_numbers() == fresh.public_key().public_numbers()
    record = json.loads(scepd("certs", "show", format(old.serial_number, "x"), directory=lifecycle_dir).stdout)
    assert (record["status"], record["reason"]) == ("revoked", "superseded")  # SignOnly: revoke_on_renewal
    new_record = json.loads(scepd("certs", "show", format(renewed.certificate.serial_number, "x"), directory=lifecycle_dir).stdout)
    assert new_record["renewal_of"] == format(old.serial_number, "x")
    # The old certificate is now on the CRL that relying parties fetch from its CDP.
    crl = _fetch_crl(old)
    assert crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert _verify_with_crl(lifecycle_dir, old, crl, tmp_path).returncode != 0
    assert _verify_with_crl(lifecycle_dir, renewed.certificate, crl, tmp_path).returncode == 0


def test_pkcsreq_signed_by_our_certificate_is_a_renewal(client):
    old, old_key = enroll_signonly(client, "apple-style")
    renewed = client.enroll(new_key(), name("apple-style"), signer=(old, old_key), key_usage=SIGN_ONLY)
    assert renewed.status is PkiStatus.SUCCESS, renewed.fail_info_text


def test_renewalreq_signed_by_a_stranger_is_badcertid(client):
    stranger = new_key()
    result = client.enroll(new_key(), name("intruder"), signer=(self_signed(stranger, name("intruder")), stranger), renewal=True)
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info is FailInfo.BAD_CERT_ID
    assert result.fail_info_text.startswith("RenewalSignerUnknown")


def test_renewal_must_keep_the_subject(client):
    old, old_key = enroll_signonly(client, "keep-subject")
    result = client.enroll(new_key(), name("another-name"), signer=(old, old_key), renewal=True, key_usage=SIGN_ONLY)
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info_text.startswith("RenewalSubjectMismatch")


def test_revoked_certificate_cannot_renew(client, lifecycle_dir):
    old, old_key = enroll_signonly(client, "revoked-one")
    revoked = scepd("certs", "revoke", format(old.serial_number, "x"), "--reason", "keyCompromise", directory=lifecycle_dir)
    assert revoked.returncode == 0, revoked.stderr
    result = client.enroll(new_key(), name("revoked-one"), signer=(old, old_key), renewal=True, key_usage=SIGN_ONLY)
    assert result.status is PkiStatus.FAILURE
    assert result.fail_info is FailInfo.BAD_CERT_ID
    assert result.fail_info_text.startswith("SignerCertificateRevoked")
    crl = _fetch_crl(old)
    entry = crl.get_revoked_certificate_by_serial_number(old.serial_number)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise


def test_strongswan_renews_with_its_old_certificate(srv, lifecycle_dir, tmp_path):
    require_tool("pki")
    key = new_key()
    first = ScepClient(srv.url).enroll(key, name("strongswan-renew"), challenge=CHALLENGE)
    assert first.status is PkiStatus.SUCCESS
    (tmp_path / "old.pem").write_bytes(pem(first.certificate))
    (tmp_path / "old.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                                         serialization.NoEncryption()))
    for f in ("ca", "ra"):
        (tmp_path / f"{f}.pem").write_bytes((lifecycle_dir / f"{f}.pem").read_bytes())
    new = subprocess.run(["pki", "--gen", "--type", "rsa", "--size", "2048", "--outform", "pem"], capture_output=True, check=True).stdout
    (tmp_path / "new.key").write_bytes(new)
    renewed = subprocess.run(
        ["pki", "--scep", "--url", srv.url, "--in", "new.key", "--dn", "CN=strongswan-renew", "--cert", "old.pem",
         "--key", "old.key", "--cacert-enc", "ra.pem", "--cacert-sig", "ca.pem", "--cipher", "des3", "--outform", "pem"],
        cwd=tmp_path, capture_output=True, timeout=120,
    )
    assert renewed.returncode == 0, renewed.stderr.decode()
    assert openssl_verify(lifecycle_dir / "ca.pem", renewed.stdout, tmp_path).returncode == 0
    logged = [json.loads(line) for line in srv.log_lines() if "strongswan-renew" in line]
    assert logged[-1]["renewal_of"] == format(first.certificate.serial_number, "x")


# --- GetCert, GetCRL, CRLs --------------------------------------------------------------------


def _fetch_crl(cert: x509.Certificate) -> x509.CertificateRevocationList:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = points[0].full_name[0].value
    response = httpx.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(response.content)


def _verify_with_crl(directory, cert, crl, tmp_path) -> subprocess.CompletedProcess:
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(pem(cert))
    return subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(directory / "ca.pem"),
                           "-CRLfile", str(tmp_path / "crl.pem"), str(tmp_path / "leaf.pem")], capture_output=True, text=True)


def test_crl_is_signed_by_the_ca_and_numbered(client, lifecycle_dir):
    cert, _ = enroll_signonly(client, "crl-number")
    ca = x509.load_pem_x509_certificate((lifecycle_dir / "ca.pem").read_bytes())
    before = _fetch_crl(cert)
    assert before.is_signature_valid(ca.public_key())
    assert scepd("certs", "revoke", format(cert.serial_number, "x"), directory=lifecycle_dir).returncode == 0
    after = _fetch_crl(cert)
    number = lambda crl: crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number  # noqa: E731
    assert number(after) > number(before)
    assert after.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    again = scepd("certs", "revoke", format(cert.serial_number, "x"), directory=lifecycle_dir)
    assert again.returncode == 2 and "already revoked" in again.stderr


def test_getcert_and_getcrl_answer_holders_of_our_certificates_only(client, lifecycle_dir):
    holder, holder_key = enroll_signonly(client, "holder")
    target, _ = enroll_signonly(client, "target")
    ca = client.get_ca_certs()
    got = client.get_cert(ca.ca.subject, target.serial_number, (holder, holder_key))
    assert got == target
    crl = client.get_crl(ca.ca.subject, target.serial_number, (holder, holder_key))
    assert crl.is_signature_valid(ca.ca.public_key())
    stranger = new_key()
    with pytest.raises(ScepClientError, match="RequesterNotAuthorized"):
        client.get_cert(ca.ca.subject, target.serial_number, (self_signed(stranger, name("s")), stranger))
    with pytest.raises(ScepClientError, match="CertificateUnknown"):
        client.get_cert(ca.ca.subject, 12345, (holder, holder_key))


# --- CA rollover and RA renewal ----------------------------------------------------------------


def _wait_until(predicate, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("the server did not pick up the change")


def test_ca_rollover_overlap_and_ra_renewal_without_restart(tmp_path):
    d = tmp_path / "rollover"
    create_instance(d, ca_subject="CN=Rolling CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    server = RunningServer(d)
    try:
        c = ScepClient(server.url)
        old_ca = c.get_ca_certs()
        first_key = new_key()
        first = c.enroll(first_key, name("before-rollover"), challenge=CHALLENGE, ca=old_ca)
        assert first.status is PkiStatus.SUCCESS
        assert "GETNEXTCACERT" not in c.get_ca_caps()
        assert httpx.get(server.url, params={"operation": "GetNextCACert"}).status_code == 404

        assert run_scepd("ca", "rollover", "--dir", str(d)).returncode == 0
        _wait_until(lambda: "GETNEXTCACERT" in c.get_ca_caps())
        response = httpx.get(server.url, params={"operation": "GetNextCACert"})
        assert response.headers["content-type"] == "application/x-x509-next-ca-cert"
        next_ca_message = signed.parse_signed_data(response.content, old_ca.all)
        assert next_ca_message.signature_error is None and next_ca_message.signer_certificate == old_ca.ra  # signed by the current RA
        next_certs = signed.parse_certs_only(next_ca_message.content)
        next_ca = next(cert for cert in next_certs if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        assert next_ca != old_ca.ca

        assert run_scepd("ca", "activate-next", "--dir", str(d)).returncode == 0
        current = _wait_until(lambda: (cas := c.get_ca_certs()).ca == next_ca and cas)
        assert old_ca.ca in current.all  # the overlap: the previous CA is still offered
        after = c.enroll(new_key(), name("after-rollover"), challenge=CHALLENGE, ca=current)
        assert after.status is PkiStatus.SUCCESS
        assert after.certificate.issuer == next_ca.subject
        after.certificate.verify_directly_issued_by(next_ca)
        # A device holding a certificate of the old CA renews into the new one.
        renewed = c.enroll(new_key(), name("before-rollover"), signer=(first.certificate, first_key), renewal=True, ca=current)
        assert renewed.status is PkiStatus.SUCCESS, renewed.fail_info_text
        renewed.certificate.verify_directly_issued_by(next_ca)

        # RA renewal: running server switches, and a request encrypted to the old RA still opens.
        stale = current
        assert run_scepd("ra", "renew", "--dir", str(d)).returncode == 0
        fresh = _wait_until(lambda: (cas := c.get_ca_certs()).ra != stale.ra and cas)
        assert fresh.ra.issuer == next_ca.subject
        late_key = new_key()
        late = c.enroll(late_key, name("stale-ra"), challenge=CHALLENGE,
                        ca=type(stale)(stale.ca, stale.ra, stale.all + (fresh.ra,)))
        assert late.status is PkiStatus.SUCCESS, late.fail_info_text
        assert server.alive()
    finally:
        server.stop()


def test_templates_can_pin_the_previous_ca_and_limit_the_renewal_window(tmp_path):
    d = tmp_path / "pinned"
    create_instance(d, ca_subject="CN=Pinned CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    old_ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    old_kid = old_ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    assert run_scepd("ca", "rollover", "--dir", str(d)).returncode == 0
    assert run_scepd("ca", "activate-next", "--dir", str(d)).returncode == 0
    update_config_file(d / "scepd.toml", {"templates": {"Old": {"ca": "0011"}}, "template_mapping": {"SignatureTemplate": "Old"}})
    refused = run_scepd("serve", "--dir", str(d), "--port", str(free_port()), timeout=30)
    assert refused.returncode == 2 and "[templates.Old] ca = '0011'" in refused.stderr

    update_config_file(d / "scepd.toml", {
        "templates": {"Old": {"ca": old_kid}, "Windowed": {"renewal_window_days": 30}},
        "template_mapping": {"SignatureTemplate": "Old", "GeneralPurposeTemplate": "Windowed"},
    })
    server = RunningServer(d)
    try:
        c = ScepClient(server.url)
        pinned = c.enroll(new_key(), name("pinned"), challenge=CHALLENGE, key_usage=SIGN_ONLY)
        assert pinned.status is PkiStatus.SUCCESS, pinned.fail_info_text
        pinned.certificate.verify_directly_issued_by(old_ca)
        key = new_key()
        current = c.enroll(key, name("windowed"), challenge=CHALLENGE)
        assert current.status is PkiStatus.SUCCESS
        from scepd.registry.config import load_config

        active = load_config(d / "scepd.toml", environ={}).ca.certificate
        current.certificate.verify_directly_issued_by(x509.load_pem_x509_certificate((d / active).read_bytes()))
        early = c.enroll(new_key(), name("windowed"), signer=(current.certificate, key), renewal=True)
        assert early.status is PkiStatus.FAILURE
        assert early.fail_info_text.startswith("RenewalTooEarly") and "30 days" in early.fail_info_text
    finally:
        server.stop()


def test_without_an_ra_the_ca_answers_alone(tmp_path):
    d = tmp_path / "no-ra"
    create_instance(d, ca_subject="CN=Lonely CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"ra": {"certificate": "", "key": ""}})
    server = RunningServer(d)
    try:
        response = httpx.get(server.url, params={"operation": "GetCACert"})
        assert response.headers["content-type"] == "application/x-x509-ca-cert"
        ca = x509.load_der_x509_certificate(response.content)
        assert ca == x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
        result = ScepClient(server.url).enroll(new_key(), name("no-ra-device"), challenge=CHALLENGE)
        assert result.status is PkiStatus.SUCCESS, result.fail_info_text
        result.certificate.verify_directly_issued_by(ca)
    finally:
        server.stop()


def test_an_ra_renewal_and_a_rollover_in_the_same_second_take_separate_files(tmp_path):
    """Both name their files by the CA clock's second: the second one takes the next free name
    instead of failing on the first one's key file."""
    import datetime as dt

    from scepd.clock import FixedClock
    from scepd.registry.instance import Instance, load_key_material
    from scepd.registry.keyops import renew_ra, rollover

    d = tmp_path / "same-second"
    create_instance(d, key_spec="ec:p256")
    clock = FixedClock(dt.datetime.now(dt.timezone.utc))
    renewed = renew_ra(Instance.open(d), load_key_material(Instance.open(d), clock))
    rollover(Instance.open(d), load_key_material(Instance.open(d), clock))
    files = Instance.open(d).config.ra
    assert files.certificate == renewed.name and files.next_certificate == renewed.name.replace(".pem", "-2.pem")
    assert files.next_key == files.next_certificate.replace(".pem", ".key") and (d / files.next_key).exists()
