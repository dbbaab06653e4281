"""The registration point end to end over HTTP: MDM-signed challenges, every refusal by its
Intune name, replay across server processes, strongSwan, and the motivating failure of
Microsoft's connector (entries missing from its registry) reproduced and mended."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time

import pytest
from conftest import CHALLENGE, RunningServer, openssl_verify, require_tool, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jwe, jws
from joserfc.jwk import ECKey

from scepd.ca.keys import load_certificate, load_key
from scepd.challenge.mdm import THUMBPRINT, ExpectedRequest, issue_challenge
from scepd.clock import SYSTEM_CLOCK, FixedClock
from scepd.protocol.fingerprints import jose_thumbprint
from scepd.client import ScepClient, parse_san
from scepd.client.client import self_signed
from scepd.protocol import FailInfo, PkiStatus
from scepd.registry.instance import create_instance

SIGN_AND_ENCRYPT = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
AUDIENCE = "scepd-registration-point"


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def rp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rp")
    create_instance(d, ca_subject="CN=RP CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    return d


@pytest.fixture(scope="module")
def srv(rp_dir):
    server = RunningServer(rp_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(srv):
    with ScepClient(srv.url) as c:
        yield c


def issue(rp_dir, *args: str) -> str:
    result = run_scepd("challenge", "issue", "--dir", str(rp_dir), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def local_pairs(rp_dir):
    signing = (load_certificate(rp_dir / "rp/mdm-signing.pem"), load_key(rp_dir / "rp/mdm-signing.key"))
    encryption = load_certificate(rp_dir / "rp/encryption.pem")
    return signing, encryption


def crafted(rp_dir, expected=ExpectedRequest(subject="CN=crafted"), *, signing=None, encryption=None,
            clock=SYSTEM_CLOCK, lifetime=dt.timedelta(minutes=30), audience=AUDIENCE) -> str:
    (cert, key), enc = local_pairs(rp_dir)
    if signing:
        cert, key = signing
    return issue_challenge(signing_certificate=cert, signing_key=key, encryption_certificate=encryption or enc,
                           expected=expected, issuer="test-mdm", audience=audience, lifetime=lifetime, clock=clock)[0]


def enroll(client, challenge, cn="crafted", **kwargs):
    key = kwargs.pop("key", None) or rsa.generate_private_key(65537, 2048)
    return client.enroll(key, name(cn), challenge=challenge, **kwargs)


def refused_with(result, code: str):
    assert result.status is PkiStatus.FAILURE, "expected a refusal"
    assert result.fail_info is FailInfo.BAD_REQUEST
    assert result.fail_info_text.startswith(f"{code}: "), result.fail_info_text


# --- the happy path -----------------------------------------------------------------------------


def test_mdm_challenge_enrolls_and_every_phase_is_logged(client, srv, rp_dir, tmp_path):
    out = json.loads(run_scepd("challenge", "issue", "--dir", str(rp_dir), "--subject", "CN=mdm-device,O=Example",
                               "--san", "dns:mdm-device.example", "--key-usage", "digitalSignature,keyEncipherment",
                               "--eku", "clientAuth", "--key-type", "rsa", "--min-key-size", "2048",
                               "--device-id", "D-42", "--json").stdout)
    assert len(out["challenge"]) < 4096 and out["scep_url"].endswith("/scep")
    result = client.enroll(
        rsa.generate_private_key(65537, 2048), x509.Name.from_rfc4514_string("CN=mdm-device,O=Example"),
        sans=[parse_san("dns:mdm-device.example"), parse_san("uri:IntuneDeviceId://D-42")],
        challenge=out["challenge"], key_usage=SIGN_AND_ENCRYPT, extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
        use_get=True,  # it fits in a GET request
    )
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    assert openssl_verify(rp_dir / "ca.pem", result.certificate.public_bytes(serialization.Encoding.PEM), tmp_path).returncode == 0
    phases = [json.loads(line) for line in srv.log_lines() if '"phase"' in line and result.transaction_id in line]
    assert [p["phase"] for p in phases] == ["decode", "decrypt", "signature", "time", "compare", "replay"]
    assert {p["result"] for p in phases} == {"pass"}
    readable = run_scepd("logs", "--dir", str(rp_dir), "--transaction", result.transaction_id).stdout
    assert "compare" in readable and "status=SUCCESS" in readable


def test_challenge_can_name_the_template(client, rp_dir, tmp_path):
    from scepd.registry.config import update_config_file

    update_config_file(rp_dir / "scepd.toml", {"templates": {"Servers": {"extended_key_usage": ["serverAuth"]}}})
    time.sleep(2.5)  # the server picks the new template up
    challenge = issue(rp_dir, "--subject", "CN=web", "--template", "Servers")
    result = enroll(client, challenge, "web")
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    eku = result.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_third_party_mdm_signs_with_its_own_trusted_key(client, rp_dir, tmp_path):
    mdm_key = ec.generate_private_key(ec.SECP256R1())
    mdm_cert = self_signed(mdm_key, name("Example MDM signing"))
    (tmp_path / "mdm.pem").write_bytes(mdm_cert.public_bytes(serialization.Encoding.PEM))
    challenge = crafted(rp_dir, ExpectedRequest(subject="CN=third-party"), signing=(mdm_cert, mdm_key))
    refused_with(enroll(client, challenge, "third-party"), "SigningCertThumbprintMismatch")
    assert run_scepd("registry", "trust", "add", str(tmp_path / "mdm.pem"), "--dir", str(rp_dir)).returncode == 0
    shown = json.loads(run_scepd("registry", "show", "--dir", str(rp_dir)).stdout)
    assert jose_thumbprint(mdm_cert) in {t["thumbprint_sha256"] for t in shown["trusted_signers"]}
    time.sleep(2.5)
    challenge = crafted(rp_dir, ExpectedRequest(subject="CN=third-party"), signing=(mdm_cert, mdm_key))
    result = enroll(client, challenge, "third-party")
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text


# --- every refusal, by name ------------------------------------------------------------------


def _other_encryption_cert():
    key = ec.generate_private_key(ec.SECP256R1())
    return self_signed(key, name("someone else's registration point"))


def _jwe_of(rp_dir, plaintext: bytes) -> str:
    _, enc = local_pairs(rp_dir)
    return jwe.encrypt_compact({"alg": "ECDH-ES+A128KW", "enc": "A128GCM"}, plaintext, ECKey.import_key(enc.public_key()))


def _forged_signature(rp_dir) -> str:
    """Claims the trusted signer's thumbprint, but signed by another key."""
    (cert, _), _ = local_pairs(rp_dir)
    other = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    claims = {"iss": "x", "aud": AUDIENCE, "iat": now, "exp": now + 600, "jti": "forged", "req": {"subject": "CN=crafted"}}
    signed = jws.serialize_compact({"alg": "ES256", THUMBPRINT: jose_thumbprint(cert)}, json.dumps(claims), ECKey.import_key(other))
    return _jwe_of(rp_dir, signed.encode())


def _unsigned_claims(rp_dir) -> str:
    (cert, key), _ = local_pairs(rp_dir)
    signed = jws.serialize_compact({"alg": "ES256", THUMBPRINT: jose_thumbprint(cert)}, '{"aud": "scepd-registration-point"}', ECKey.import_key(key))
    return _jwe_of(rp_dir, signed.encode())


CASES = {
    "ChallengePasswordMissing": (lambda d: None, {}),
    "ChallengeDecodingError": (lambda d: "bm90LWpzb24.a.b.c.d", {}),
    "ChallengeDecryptionError": (lambda d: crafted(d, encryption=_other_encryption_cert()), {}),
    "ChallengeDeserializationError": (lambda d: _jwe_of(d, b"this is not a JWS"), {}),
    "SignatureValidationFailed": (_forged_signature, {}),
    "SigningCertThumbprintMismatch": (
        lambda d: crafted(d, signing=(self_signed(k := ec.generate_private_key(ec.SECP256R1()), name("rogue")), k)), {}),
    "ChallengeExpired": (lambda d: crafted(d, clock=FixedClock(SYSTEM_CLOCK.now() - dt.timedelta(hours=2))), {}),
    "ChallengeInvalidTimestamp": (lambda d: crafted(d, clock=FixedClock(SYSTEM_CLOCK.now() + dt.timedelta(hours=1))), {}),
    "SubjectNameMismatch": (lambda d: crafted(d, ExpectedRequest(subject="CN=someone-else")), {}),
    "SubjectNameMissing": (lambda d: crafted(d, ExpectedRequest(subject="CN=crafted")),
                           {"cn": None, "sans": [parse_san("dns:x.example")]}),
    "SubjectAltNameMismatch": (lambda d: crafted(d, ExpectedRequest(sans=("dns:a.example",))), {"sans": [parse_san("dns:b.example")]}),
    "SubjectAltNameMissing": (lambda d: crafted(d, ExpectedRequest(sans=("dns:a.example",))), {}),
    "KeyUsageMismatch": (lambda d: crafted(d, ExpectedRequest(key_usage=("digitalSignature",))), {"key_usage": SIGN_AND_ENCRYPT}),
    "KeyLengthMismatch": (lambda d: crafted(d, ExpectedRequest(min_key_size=3072)), {}),
    "EnhancedKeyUsageMismatch": (lambda d: crafted(d, ExpectedRequest(eku=("clientAuth",))),
                                 {"extended_key_usage": [ExtendedKeyUsageOID.SERVER_AUTH]}),
    "EnhancedKeyUsageMissing": (lambda d: crafted(d, ExpectedRequest(eku=("clientAuth",))), {}),
    "BadDeviceIdInChallenge": (lambda d: crafted(d, ExpectedRequest(device_id="D-1")),
                               {"sans": [parse_san("uri:IntuneDeviceId://D-2")]}),
}


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_refusal_is_answered_with_its_name(client, rp_dir, code):
    make, options = CASES[code]
    options = dict(options)
    cn = options.pop("cn", "crafted")
    subject = name(cn) if cn else x509.Name([])
    result = client.enroll(rsa.generate_private_key(65537, 2048), subject, challenge=make(rp_dir), **options)
    refused_with(result, code)


def test_deserialization_of_claims_without_jti_is_named(client, rp_dir):
    refused_with(enroll(client, _unsigned_claims(rp_dir)), "ChallengeDeserializationError")


def test_a_challenge_for_another_audience_is_refused(client, rp_dir):
    refused_with(enroll(client, crafted(rp_dir, audience="another-rp")), "ChallengeDeserializationError")


def test_replay_from_a_second_server_process_is_refused(client, srv, rp_dir):
    challenge = issue(rp_dir, "--subject", "CN=once")
    assert enroll(client, challenge, "once").status is PkiStatus.SUCCESS
    second = RunningServer(rp_dir)
    try:
        with ScepClient(second.url) as other:
            refused_with(enroll(other, challenge, "once"), "ChallengeReplayed")
    finally:
        second.stop()


def test_refused_challenge_is_not_spent(client, rp_dir):
    """A request that fails the template check after its challenge verified leaves the
    challenge unused (one unit of work): the device can retry with a proper key."""
    challenge = issue(rp_dir, "--subject", "CN=retry")
    weak = enroll(client, challenge, "retry", key=rsa.generate_private_key(65537, 1024),
                  signer=(self_signed(k := rsa.generate_private_key(65537, 2048), name("s")), k))
    assert weak.fail_info_text.startswith("KeyTooWeak")
    assert enroll(client, challenge, "retry").status is PkiStatus.SUCCESS


def test_strongswan_enrolls_with_an_mdm_challenge(srv, rp_dir, tmp_path):
    require_tool("pki")
    challenge = issue(rp_dir, "--subject", "CN=strongswan-mdm", "--san", "dns:strongswan-mdm.example")
    subprocess.run(["pki", "--scepca", "--url", srv.url, "--caout", "ca.pem", "--raout", "ra.pem", "--outform", "pem"],
                   cwd=tmp_path, capture_output=True, check=True)
    key = subprocess.run(["pki", "--gen", "--type", "rsa", "--size", "2048", "--outform", "pem"], capture_output=True, check=True)
    (tmp_path / "key.pem").write_bytes(key.stdout)
    enrolled = subprocess.run(
        ["pki", "--scep", "--url", srv.url, "--in", "key.pem", "--dn", "CN=strongswan-mdm", "--san", "strongswan-mdm.example",
         "--password", challenge, "--cacert-enc", "ra.pem", "--cacert-sig", "ca.pem", "--cipher", "des3", "--outform", "pem"],
        cwd=tmp_path, capture_output=True, timeout=120,
    )
    assert enrolled.returncode == 0, enrolled.stderr.decode()
    assert openssl_verify(rp_dir / "ca.pem", enrolled.stdout, tmp_path).returncode == 0


# --- the motivating failure, reproduced and mended ---------------------------------------------


def _doctor(directory, *flags):
    result = run_scepd("doctor", "--dir", str(directory), "--json", *flags)
    return result.returncode, {r["name"]: r for r in json.loads(result.stdout)}


def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    return predicate()


def test_missing_signing_trust_is_named_found_by_doctor_and_mended(tmp_path):
    d = tmp_path / "trust"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    server = RunningServer(d)
    try:
        c = ScepClient(server.url)
        assert run_scepd("registry", "trust", "remove", "rp/mdm-signing.pem", "--dir", str(d)).returncode == 0
        # Every enrollment with a valid challenge now fails in verification, by name.
        result = _until(lambda: (r := enroll(c, issue(d, "--subject", "CN=crafted"))).status is PkiStatus.FAILURE and r)
        refused_with(result, "SigningCertThumbprintMismatch")
        assert "scepd doctor" in result.fail_info_text
        code, checks = _doctor(d)
        assert code == 2 and checks["registration_point.trust.local"]["status"] == "FAIL"
        assert "trusted_signers" in checks["registration_point.trust.local"]["reason"]
        code, checks = _doctor(d, "--fix")
        assert code == 1 and checks["registration_point.trust.local"]["status"] == "WARN"  # repaired, and says so
        assert _doctor(d)[0] == 0
        ok = _until(lambda: (r := enroll(c, issue(d, "--subject", "CN=crafted"))).status is PkiStatus.SUCCESS and r)
        assert ok, "the same enrollment did not succeed after doctor --fix"
        assert server.alive() and "Traceback" not in server.stderr_path.read_text()
    finally:
        server.stop()


def test_missing_encryption_pair_is_named_and_a_restart_recreates_it(tmp_path):
    d = tmp_path / "encryption"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    server = RunningServer(d)
    try:
        c = ScepClient(server.url)
        stale = issue(d, "--subject", "CN=crafted")
        for f in ("rp/encryption.pem", "rp/encryption.key"):
            (d / f).unlink()
        time.sleep(2.5)  # the running server notices within two seconds
        result = _until(lambda: (r := enroll(c, stale)).fail_info_text and "RegistrationPointKeyMissing" in r.fail_info_text and r)
        refused_with(result, "RegistrationPointKeyMissing")
        failed = run_scepd("challenge", "issue", "--dir", str(d), "--subject", "CN=crafted")
        assert failed.returncode == 2 and "doctor --fix" in failed.stderr
        code, checks = _doctor(d)
        assert code == 2 and checks["registration_point.encryption"]["status"] == "FAIL"
        assert "rp/encryption.pem" in checks["registration_point.encryption"]["reason"]
    finally:
        server.stop()
    restarted = RunningServer(d)  # the start re-creates the pair and says so
    try:
        assert "registration_point.encryption" in restarted.stderr_path.read_text()
        c = ScepClient(restarted.url)
        refused_with(enroll(c, stale), "ChallengeDecryptionError")  # made for the old key
        assert enroll(c, issue(d, "--subject", "CN=crafted")).status is PkiStatus.SUCCESS
    finally:
        restarted.stop()


def test_mapping_to_a_missing_template_is_found_and_fixed_by_doctor(tmp_path):
    from scepd.registry.config import update_config_file

    d = tmp_path / "mapping"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"template_mapping": {"GeneralPurposeTemplate": "Vanished"}})
    code, checks = _doctor(d)
    assert code == 2 and "GeneralPurposeTemplate names 'Vanished'" in checks["template_mapping"]["reason"]
    assert "reset-mapping" in checks["template_mapping"]["fix"]
    code, checks = _doctor(d, "--fix")
    assert checks["template_mapping"]["status"] == "WARN"
    assert _doctor(d)[0] == 0
    server = RunningServer(d)
    try:
        assert enroll(ScepClient(server.url), issue(d, "--subject", "CN=crafted")).status is PkiStatus.SUCCESS
    finally:
        server.stop()


def test_doctor_fixes_key_permissions(tmp_path):
    d = tmp_path / "perms"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    (d / "ca.key").chmod(0o644)
    code, checks = _doctor(d)
    assert code == 2 and checks["permissions.ca.key"]["fix"].startswith("chmod 600")
    _doctor(d, "--fix")
    assert (d / "ca.key").stat().st_mode & 0o777 == 0o600


def test_apple_profile_carries_a_working_challenge_and_the_ca(client, rp_dir, tmp_path):
    import hashlib
    import plistlib

    out = tmp_path / "device.mobileconfig"
    made = run_scepd("profile", "apple", "--dir", str(rp_dir), "--subject", "CN=iphone-7,O=Example",
                     "--san", "dns:iphone-7.example", "--mdm-challenge", "--key-usage", "digitalSignature",
                     "--url", client.url, "--out", str(out))
    assert made.returncode == 0, made.stderr
    profile = plistlib.loads(out.read_bytes())
    scep, root = profile["PayloadContent"]
    assert (scep["PayloadType"], root["PayloadType"]) == ("com.apple.security.scep", "com.apple.security.root")
    content = scep["PayloadContent"]
    # DER order, most significant first, as Apple writes it.
    assert content["URL"] == client.url and content["Subject"] == [[["O", "Example"]], [["CN", "iphone-7"]]]
    assert content["Key Usage"] == 1 and content["SubjectAltName"] == {"dNSName": ["iphone-7.example"]}
    ca = x509.load_der_x509_certificate(root["PayloadContent"])
    assert ca == load_certificate(rp_dir / "ca.pem")
    assert content["CAFingerprint"] == hashlib.sha1(root["PayloadContent"]).digest()
    # What the device would do with it: the challenge is bound to exactly this request.
    result = client.enroll(rsa.generate_private_key(65537, 2048), x509.Name.from_rfc4514_string("CN=iphone-7,O=Example"),
                           sans=[parse_san("dns:iphone-7.example")], challenge=content["Challenge"],
                           key_usage=x509.KeyUsage(True, False, False, False, False, False, False, False, False))
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    as_json = json.loads(run_scepd("profile", "apple", "--dir", str(rp_dir), "--subject", "CN=android-1", "--json").stdout)
    assert as_json["ca_fingerprint_sha256"] == hashlib.sha256(root["PayloadContent"]).hexdigest()
    assert as_json["challenge"] == CHALLENGE  # the static one when no MDM challenge is asked for
