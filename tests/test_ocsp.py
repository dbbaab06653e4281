"""The OCSP responder (RFC 6960) at /ocsp, through a real `scepd serve` and `openssl ocsp`,
and the responder itself (cache, signers) where counting signatures needs it in-process."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import RunningServer, name, new_key, pem, require_tool, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from scepd.ca.authority import CertificateAuthority, create_root_ca
from scepd.ca.keys import KeyPair
from scepd.ca.ocsp import OcspResponder
from scepd.ca.ocsp_signer import CaSigns, DelegatedSigners
from scepd.client import ScepClient
from scepd.clock import FixedClock
from scepd.protocol import PkiStatus
from scepd.protocol.errors import KeyUnavailable
from scepd.registry.config import update_config_file
from scepd.registry.instance import Instance, create_instance
from scepd.store import Store
from scepd.wiring import build_services

CHALLENGE = "ocsp-challenge"
OCSP_RESPONSE = "application/ocsp-response"


@pytest.fixture(scope="module")
def ocsp_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ocsp")
    create_instance(directory, ca_subject="CN=scepd OCSP Test CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    return directory


@pytest.fixture(scope="module")
def ocsp_server(ocsp_dir):
    server = RunningServer(ocsp_dir)
    yield server
    server.stop()


def _base(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def enroll(server: RunningServer, directory: Path, cn: str) -> tuple[x509.Certificate, Path]:
    with ScepClient(server.url) as client:
        result = client.enroll(new_key(), name(cn), challenge=CHALLENGE)
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    path = directory / f"{cn}.pem"
    path.write_bytes(pem(result.certificate))
    return result.certificate, path


def ca_of(directory: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())


def openssl_ocsp(server: RunningServer, directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("openssl"), "ocsp", "-issuer", str(directory / "ca.pem"), "-url", f"{_base(server)}/ocsp",
         "-CAfile", str(directory / "ca.pem"), *args],
        capture_output=True, text=True, timeout=30, check=False,
    )


def request_for(cert: x509.Certificate, issuer: x509.Certificate, algorithm=None, nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def post(server: RunningServer, body: bytes) -> httpx.Response:
    return httpx.post(f"{_base(server)}/ocsp", content=body, headers={"Content-Type": "application/ocsp-request"})


# --- through openssl ocsp ------------------------------------------------------------------


def test_good_with_a_nonce_through_the_delegated_signer(ocsp_server, ocsp_dir, tmp_path):
    cert, path = enroll(ocsp_server, ocsp_dir, "ocsp-good")
    done = openssl_ocsp(ocsp_server, ocsp_dir, "-cert", str(path), "-reqout", str(tmp_path / "req.der"),
                        "-respout", str(tmp_path / "resp.der"))
    assert done.returncode == 0, done.stderr
    assert "Response verify OK" in done.stderr
    assert f"{path}: good" in done.stdout
    sent = ocsp.load_der_ocsp_request((tmp_path / "req.der").read_bytes())
    response = ocsp.load_der_ocsp_response((tmp_path / "resp.der").read_bytes())
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == \
        sent.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    # Signed by a delegated signer the CA issued, which the response carries.
    (signer,) = response.certificates
    signer.verify_directly_issued_by(ca_of(ocsp_dir))
    assert signer.subject != ca_of(ocsp_dir).subject
    assert ExtendedKeyUsageOID.OCSP_SIGNING in signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert signer.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert signer.not_valid_after_utc - signer.not_valid_before_utc <= dt.timedelta(days=31)
    assert response.serial_number == cert.serial_number
    assert response.next_update_utc - response.this_update_utc == dt.timedelta(hours=1)
    key_id = x509.SubjectKeyIdentifier.from_public_key(ca_of(ocsp_dir).public_key()).digest.hex()
    assert (ocsp_dir / "ocsp" / f"{key_id}.pem").read_bytes() == pem(signer)  # created at start, in the instance


def test_revoked_at_once_after_a_cached_good_answer(ocsp_server, ocsp_dir):
    cert, path = enroll(ocsp_server, ocsp_dir, "ocsp-revoked")
    for _ in range(2):  # the second is served from the cache
        good = openssl_ocsp(ocsp_server, ocsp_dir, "-cert", str(path), "-no_nonce")
        assert f"{path}: good" in good.stdout, good.stdout + good.stderr
    # Revoked by another process on the same database, as another server would.
    revoked = run_scepd("certs", "revoke", format(cert.serial_number, "x"), "--reason", "keyCompromise",
                        "--dir", str(ocsp_dir))
    assert revoked.returncode == 0, revoked.stderr
    answer = openssl_ocsp(ocsp_server, ocsp_dir, "-cert", str(path), "-no_nonce")
    assert answer.returncode == 0, answer.stderr
    assert f"{path}: revoked" in answer.stdout
    assert "Reason: keyCompromise" in answer.stdout
    assert "Revocation Time:" in answer.stdout
    record = Instance.open(ocsp_dir).open_store().find_certificate(format(cert.serial_number, "x"))
    shown = f"{record.revoked_at:%b} {record.revoked_at.day:2d} {record.revoked_at:%H:%M:%S %Y} GMT"
    assert f"Revocation Time: {shown}" in answer.stdout


def test_a_serial_never_issued_is_unknown(ocsp_server, ocsp_dir):
    done = openssl_ocsp(ocsp_server, ocsp_dir, "-serial", "0x1234abcd", "-no_nonce")
    assert done.returncode == 0, done.stderr
    assert "0x1234abcd: unknown" in done.stdout
    assert "Response verify OK" in done.stderr


def test_a_foreign_issuer_is_unauthorized(ocsp_server, ocsp_dir, tmp_path):
    foreign_key = new_key()
    foreign = create_root_ca(name("scepd OCSP Test CA"), foreign_key)  # our CA's name, another key
    (tmp_path / "foreign.pem").write_bytes(pem(foreign))
    done = subprocess.run(["openssl", "ocsp", "-issuer", str(tmp_path / "foreign.pem"), "-serial", "0x10",
                           "-url", f"{_base(ocsp_server)}/ocsp"], capture_output=True, text=True, timeout=30,
                          check=False)
    assert "unauthorized" in done.stdout + done.stderr


# --- the HTTP forms ------------------------------------------------------------------------


def test_get_with_the_request_base64_in_the_path(ocsp_server, ocsp_dir):
    cert, _ = enroll(ocsp_server, ocsp_dir, "ocsp-get")
    encoded = base64.b64encode(request_for(cert, ca_of(ocsp_dir), hashes.SHA256())).decode()
    for path in (quote(encoded, safe=""), encoded):  # URL-encoded as RFC 6960 A.1 says, and raw
        response = httpx.get(f"{_base(ocsp_server)}/ocsp/{path}")
        assert response.status_code == 200
        assert response.headers["content-type"] == OCSP_RESPONSE
        answer = ocsp.load_der_ocsp_response(response.content)
        assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        assert answer.hash_algorithm.name == "sha256"  # the CertID in the request's own digest
        assert "max-age=" in response.headers["cache-control"]


def test_a_cached_answer_is_not_signed_again(ocsp_server, ocsp_dir):
    cert, _ = enroll(ocsp_server, ocsp_dir, "ocsp-cached")
    body = request_for(cert, ca_of(ocsp_dir))
    first = post(ocsp_server, body)
    time.sleep(1.1)  # producedAt has a resolution of one second
    second = post(ocsp_server, body)
    assert first.content == second.content
    assert ocsp.load_der_ocsp_response(second.content).produced_at_utc == \
        ocsp.load_der_ocsp_response(first.content).produced_at_utc
    with_nonce = post(ocsp_server, request_for(cert, ca_of(ocsp_dir), nonce=b"n" * 16))
    assert ocsp.load_der_ocsp_response(with_nonce.content).produced_at_utc > \
        ocsp.load_der_ocsp_response(first.content).produced_at_utc


def _multi_request(directory: Path, tmp_path: Path) -> bytes:
    out = tmp_path / "multi.der"
    subprocess.run(["openssl", "ocsp", "-issuer", str(directory / "ca.pem"), "-serial", "0x1", "-serial", "0x2",
                    "-no_nonce", "-reqout", str(out)], check=True, capture_output=True)
    return out.read_bytes()


def _altered(request: bytes, change) -> bytes:
    """`request` re-encoded by asn1crypto after `change(its OCSPRequest)`: what cryptography's
    builder refuses to make."""
    from asn1crypto import ocsp as asn1_ocsp

    parsed = asn1_ocsp.OCSPRequest.load(request)
    change(parsed)
    return parsed.dump(force=True)


def _two_nonces(parsed) -> None:
    from asn1crypto import ocsp as asn1_ocsp

    first = parsed["tbs_request"]["request_extensions"][0].native
    parsed["tbs_request"]["request_extensions"] = asn1_ocsp.TBSRequestExtensions(
        [first, {**first, "extn_value": b"another nonce"}])


def _negative_serial(parsed) -> None:
    parsed["tbs_request"]["request_list"][0]["req_cert"]["serial_number"] = -5


def test_what_cannot_be_read_is_malformed_never_a_500(ocsp_server, ocsp_dir, tmp_path):
    cert, _ = enroll(ocsp_server, ocsp_dir, "ocsp-malformed")
    long_nonce = request_for(cert, ca_of(ocsp_dir), nonce=b"n" * 33)  # RFC 8954: at most 32 octets
    two_nonces = _altered(request_for(cert, ca_of(ocsp_dir), nonce=b"n" * 16), _two_nonces)
    negative = _altered(request_for(cert, ca_of(ocsp_dir)), _negative_serial)
    base = _base(ocsp_server)
    answers = [post(ocsp_server, b"garbage"), post(ocsp_server, b""), post(ocsp_server, b"\x30\x03\x02\x01\x00"),
               post(ocsp_server, long_nonce), post(ocsp_server, _multi_request(ocsp_dir, tmp_path)),
               post(ocsp_server, two_nonces), post(ocsp_server, negative),
               httpx.get(f"{base}/ocsp/{base64.b64encode(negative).decode()}"),
               httpx.get(f"{base}/ocsp/not!base64"), httpx.get(f"{base}/ocsp"), httpx.get(f"{base}/ocsp/"),
               httpx.get(f"{base}/ocsp/{base64.b64encode(b'not an OCSP request').decode()}")]
    for response in answers:
        assert response.status_code == 200, response.request
        assert response.headers["content-type"] == OCSP_RESPONSE
        status = ocsp.load_der_ocsp_response(response.content).response_status
        assert status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST, response.request
    oversized = post(ocsp_server, b"\x30" * 70000)  # above [server] max_request_bytes
    assert oversized.status_code == 413
    assert ocsp.load_der_ocsp_response(oversized.content).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert ocsp_server.alive()
    assert not [line for line in ocsp_server.log_lines() if "Traceback" in line or "internalError" in line]


def test_scepds_own_certificates_carry_no_ocsp_url_it_would_answer_unknown(ocsp_server, ocsp_dir, tmp_path):
    """The RA, the registration point's pairs and the `--tls self` certificate are issued
    outside the store: they carry caIssuers but no OCSP URL. Every certificate that does carry
    it gets a known status."""
    import shutil
    from dataclasses import replace

    from scepd.registry.tls import issue_self

    device, _ = enroll(ocsp_server, ocsp_dir, "ocsp-aia")
    with ScepClient(ocsp_server.url) as client:
        ra = client.get_ca_certs().ra
    rp = Instance.open(ocsp_dir).config.registration_point
    own = [ra, *(x509.load_pem_x509_certificate((ocsp_dir / f).read_bytes())
                 for f in (rp.encryption_certificate, rp.signing_certificate))]
    copy = tmp_path / "copy"
    shutil.copytree(ocsp_dir, copy, ignore=shutil.ignore_patterns("scepd.db*"))
    config = Instance.open(copy).config
    with_tls = Instance(copy, replace(config, server=replace(config.server, tls="self")))
    ca = build_services(Instance.open(ocsp_dir), Instance.open(ocsp_dir).open_store()).admin.authorities.ca
    own.append(issue_self(with_tls, ca))
    for cert in (*own, device):
        aia = {d.access_method for d in cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value}
        assert x509.oid.AuthorityInformationAccessOID.CA_ISSUERS in aia, cert.subject
        if x509.oid.AuthorityInformationAccessOID.OCSP not in aia:
            assert cert in own
            continue
        answer = ocsp.load_der_ocsp_response(post(ocsp_server, request_for(cert, ca_of(ocsp_dir))).content)
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD, cert.subject
    assert device not in own


# --- the responder in-process: signatures counted, signers renewed ------------------------


@pytest.fixture()
def responder_parts(ocsp_server, ocsp_dir):
    """The instance's services on the server's database, on a clock of the test's own."""
    cert, _ = enroll(ocsp_server, ocsp_dir, f"ocsp-unit-{time.monotonic_ns()}")
    clock = FixedClock(dt.datetime.now(dt.UTC))
    instance = Instance.open(ocsp_dir)
    services = build_services(instance, instance.open_store(clock), clock=clock)
    return services, cert, clock


def test_the_cache_signs_once_until_the_refresh_point_or_a_status_change(responder_parts, ocsp_dir):
    services, cert, clock = responder_parts
    responder = services.ocsp
    body = request_for(cert, ca_of(ocsp_dir))
    first = responder.respond(body)
    assert (first.status, first.cached, responder.signatures) == ("good", False, 1)
    for _ in range(5):
        assert responder.respond(body).cached
    assert responder.signatures == 1
    clock.advance(dt.timedelta(minutes=31))  # past half of the hour's validity: signed afresh
    again = responder.respond(body)
    assert (again.cached, responder.signatures) == (False, 2)
    assert ocsp.load_der_ocsp_response(again.der).this_update_utc == clock.now().replace(microsecond=0)
    services.admin.revoke(format(cert.serial_number, "x"), "superseded")
    revoked = responder.respond(body)
    assert (revoked.status, revoked.cached, responder.signatures) == ("revoked", False, 3)
    assert ocsp.load_der_ocsp_response(revoked.der).revocation_reason is x509.ReasonFlags.superseded
    nonce = request_for(cert, ca_of(ocsp_dir), nonce=b"x" * 8)
    responder.respond(nonce), responder.respond(nonce)
    assert responder.signatures == 5  # a nonce is signed for every time


def test_signed_by_the_ca_when_configured(ocsp_dir, tmp_path, ocsp_server):
    cert, _ = enroll(ocsp_server, ocsp_dir, "ocsp-ca-signed")
    instance = Instance.open(ocsp_dir)
    ca = build_services(instance, instance.open_store()).admin.authorities.ca
    responder = OcspResponder(instance.open_store(), (ca,), CaSigns())
    response = ocsp.load_der_ocsp_response(responder.respond(request_for(cert, ca.certificate)).der)
    assert response.certificates == []
    assert response.responder_key_hash == ca.authority_key_identifier.key_identifier
    ca.certificate.public_key().verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                                       response.signature_hash_algorithm)


def test_signer_config_is_checked(ocsp_dir):
    with pytest.raises(ValueError, match="signer must be"):
        update_config_file(ocsp_dir / "scepd.toml", {"ocsp": {"signer": "somebody"}})


def _authority(clock) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    return CertificateAuthority(KeyPair(create_root_ca(name("Renewal CA"), key, clock=clock), key), clock=clock)


def test_the_delegated_signer_is_renewed_before_its_end_and_shared_through_its_files(tmp_path):
    clock = FixedClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    ca = _authority(clock)
    signers = DelegatedSigners(tmp_path / "ocsp", clock=clock)
    first = signers.signer_for(ca).pair.certificate
    cert_path, key_path = signers.paths(ca)
    assert cert_path.read_bytes() == pem(first)
    assert key_path.stat().st_mode & 0o077 == 0
    # Another process on the same directory reads the same pair instead of making its own.
    assert DelegatedSigners(tmp_path / "ocsp", clock=clock).signer_for(ca).pair.certificate == first
    clock.advance(dt.timedelta(days=19))  # 11 of 30 days left: kept
    assert signers.signer_for(ca).pair.certificate == first
    clock.advance(dt.timedelta(days=2))  # 9 left, under a third: renewed
    second = signers.signer_for(ca).pair.certificate
    assert second != first and cert_path.read_bytes() == pem(second)
    assert second.not_valid_after_utc > first.not_valid_after_utc
    cert_path.write_bytes(b"not a certificate")  # a broken file is replaced, not served
    assert DelegatedSigners(tmp_path / "ocsp", clock=clock).signer_for(ca).pair.certificate not in (first, second)


def test_an_unwritable_directory_leaves_a_signer_in_memory(tmp_path):
    clock = FixedClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    ca = _authority(clock)
    (tmp_path / "ocsp").write_text("a file where the directory should be")
    signers = DelegatedSigners(tmp_path / "ocsp", clock=clock)
    signer = signers.signer_for(ca)
    assert signer.delegated and ca.issued(signer.pair.certificate)
    assert "cannot hold the OCSP signer" in signers.problem


def test_doctor_reports_a_missing_signer_and_fix_creates_it(tmp_path):
    directory = tmp_path / "instance"
    create_instance(directory, key_spec="ec:p256", static_challenge=CHALLENGE)
    missing = run_scepd("doctor", "--dir", str(directory))
    assert "WARN  ocsp.signer" in missing.stdout + missing.stderr
    assert "is missing" in missing.stdout + missing.stderr
    fixed = run_scepd("doctor", "--fix", "--dir", str(directory))
    assert "PASS  ocsp.signer: created the OCSP signer" in fixed.stdout + fixed.stderr
    (pem_file,) = (directory / "ocsp").glob("*.pem")
    signer = x509.load_pem_x509_certificate(pem_file.read_bytes())
    assert isinstance(signer.public_key(), ec.EllipticCurvePublicKey)  # of the CA's kind
    again = run_scepd("doctor", "--dir", str(directory))
    assert "PASS  ocsp.signer" in again.stdout + again.stderr


def test_a_subordinate_cas_answers_carry_its_certificate_for_a_relying_party_with_the_root(tmp_path):
    root_key, sub_key = new_key(), ec.generate_private_key(ec.SECP256R1())
    root = create_root_ca(name("Enterprise Root"), root_key)
    sub_cert = (x509.CertificateBuilder().subject_name(name("scepd Issuing CA")).issuer_name(root.subject)
                .public_key(sub_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(root.not_valid_before_utc).not_valid_after(root.not_valid_after_utc)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(sub_key.public_key()), critical=False)
                .sign(root_key, hashes.SHA256()))
    sub = CertificateAuthority(KeyPair(sub_cert, sub_key))
    store = Store(f"sqlite:///{tmp_path / 'scepd.db'}")
    store.upgrade()
    responder = OcspResponder(store, (sub,), DelegatedSigners(None))
    der = responder.respond(ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        _name_hash(sub_cert), _key_hash(sub_cert), 0x77, hashes.SHA1()).build()
        .public_bytes(Encoding.DER)).der
    response = ocsp.load_der_ocsp_response(der)
    assert response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    assert response.certificates[1] == sub_cert
    (tmp_path / "resp.der").write_bytes(der)
    (tmp_path / "root.pem").write_bytes(pem(root))
    checked = subprocess.run([require_tool("openssl"), "ocsp", "-respin", str(tmp_path / "resp.der"),
                              "-CAfile", str(tmp_path / "root.pem")], capture_output=True, text=True, check=False)
    assert "Response verify OK" in checked.stderr, checked.stderr


def _name_hash(cert: x509.Certificate) -> bytes:
    digest = hashes.Hash(hashes.SHA1())
    digest.update(cert.subject.public_bytes())
    return digest.finalize()


def _key_hash(cert: x509.Certificate) -> bytes:
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # SHA-1 of the key's bits


def _nonce_request(ca: CertificateAuthority, serial: int = 0x77) -> bytes:
    return (ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(_name_hash(ca.certificate), _key_hash(ca.certificate), serial, hashes.SHA1())
            .add_extension(x509.OCSPNonce(b"fresh nonce"), critical=False).build().public_bytes(Encoding.DER))


def _key_away(*args, **kwargs):
    raise KeyUnavailable("the token holding object=ca in token scepd does not answer (DeviceRemoved)")


def test_a_failed_renewal_keeps_the_valid_signer_and_a_key_away_is_try_later(tmp_path, monkeypatch, caplog):
    """The CA key (as in a token gone away) cannot sign the renewal: the current signer, valid
    for days still, goes on answering, said once; with no valid signer the answer is tryLater."""
    import scepd.ca.ocsp
    import scepd.ca.ocsp_signer

    clock = FixedClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    ca = _authority(clock)
    store = Store(f"sqlite:///{tmp_path / 'scepd.db'}")
    store.upgrade()
    responder = OcspResponder(store, (ca,), DelegatedSigners(tmp_path / "ocsp", clock=clock), clock=clock)
    first = ocsp.load_der_ocsp_response(responder.respond(_nonce_request(ca)).der).certificates[0]
    clock.advance(dt.timedelta(days=21))  # renewal due: 9 of 30 days left
    with monkeypatch.context() as patch, caplog.at_level("WARNING", logger="scepd.ocsp"):
        patch.setattr(scepd.ca.ocsp_signer, "sign_with", _key_away)
        for _ in range(3):
            answer = responder.respond(_nonce_request(ca))
            assert answer.status == "unknown"
            assert ocsp.load_der_ocsp_response(answer.der).certificates[0] == first
        assert len([r for r in caplog.records if "not renewed" in r.getMessage()]) == 1
        # No signer at all (a fresh process, the token away): tryLater, not internalError.
        fresh = OcspResponder(store, (ca,), DelegatedSigners(tmp_path / "elsewhere", clock=clock), clock=clock)
        fresh.prepare()  # start-up goes on
        assert fresh.respond(_nonce_request(ca)).status == "tryLater"
    clock.advance(dt.timedelta(minutes=2))  # the token is back: renewed at the next query
    renewed = ocsp.load_der_ocsp_response(responder.respond(_nonce_request(ca)).der).certificates[0]
    assert renewed != first and ca.issued(renewed)
    # signer = "ca" with the CA's key away: tryLater too, for a cacheable request as well,
    # unless an answer signed before still holds (past its refresh point, before nextUpdate).
    by_ca = OcspResponder(store, (ca,), CaSigns(), clock=clock)
    plain, signed_before = (ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        _name_hash(ca.certificate), _key_hash(ca.certificate), serial, hashes.SHA1()).build().public_bytes(Encoding.DER)
        for serial in (0x78, 0x79))
    earlier = by_ca.respond(signed_before)
    clock.advance(dt.timedelta(minutes=40))
    monkeypatch.setattr(scepd.ca.ocsp, "sign_with", _key_away)
    assert by_ca.respond(_nonce_request(ca)).status == by_ca.respond(plain).status == "tryLater"
    kept = by_ca.respond(signed_before)
    assert kept.cached and kept.der == earlier.der


def _signer_without(ca: CertificateAuthority, *, nocheck: bool, digital_signature: bool) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = ca.clock.now()
    builder = (x509.CertificateBuilder().subject_name(name("hand-made signer")).issuer_name(ca.certificate.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.KeyUsage(digital_signature, False, not digital_signature, False, False, False, False,
                                            False, False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False))
    if nocheck:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    return KeyPair(builder.sign(ca.pair.key, hashes.SHA256()), key)


def test_a_signer_on_disk_without_nocheck_or_digital_signature_is_replaced(tmp_path):
    from scepd.ca.keys import save_certificate, save_key
    from scepd.ca.ocsp_signer import signer_problem

    clock = FixedClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    ca = _authority(clock)
    for kwargs, reason in (({"nocheck": False, "digital_signature": True}, "id-pkix-ocsp-nocheck"),
                           ({"nocheck": True, "digital_signature": False}, "digitalSignature")):
        signers = DelegatedSigners(tmp_path / reason, clock=clock)
        signers.directory.mkdir()
        placed = _signer_without(ca, **kwargs)
        cert_path, key_path = signers.paths(ca)
        save_certificate(placed.certificate, cert_path)
        save_key(placed.key, key_path)
        assert reason in signer_problem(signers.load(ca), ca, clock.now())
        used = signers.signer_for(ca).pair
        assert used.certificate != placed.certificate and signer_problem(used, ca, clock.now()) is None
