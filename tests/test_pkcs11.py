"""Keys in a PKCS#11 token (SoftHSM2, a throwaway token in this module's temporary
directory): URIs, `scepd init --pkcs11`, serving and enrolling with strongSwan, CRLs and
every builder signed by the token, non-extractable keys, doctor's fixes, a token that goes
away while serving."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import CHALLENGE, RunningServer, require_tool, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from scepd.ca.pkcs11 import Pkcs11Uri, Pkcs11UriError, TokenError

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "4711-test-pin"
BASE = f"pkcs11:token=scepd?module-path={MODULE}&pin-source=env:SCEPD_PKCS11_PIN"


# --- the URI, no token needed -------------------------------------------------------------------


def test_uri_attributes_are_percent_decoded():
    uri = Pkcs11Uri.parse("pkcs11:token=My%20Token;object=ca%3Bkey;id=%01%FF?module-path=/usr/lib/x%2Dy.so&pin-source=env:P")
    assert uri.path["token"] == "My Token" and uri.object == "ca;key" and uri.id == b"\x01\xff"
    assert uri.module_path == "/usr/lib/x-y.so"
    assert Pkcs11Uri.parse(str(uri)) == uri  # written back encoded, read back the same


@pytest.mark.parametrize(("text", "attribute"), [
    ("pkcs11:token=a;colour=red?module-path=/m.so", "colour"),
    ("pkcs11:token=a?module-path=/m.so&pin-sauce=env:X", "pin-sauce"),
    ("pkcs11:token=a;token=b?module-path=/m.so", "token"),
    ("pkcs11:token=a%2?module-path=/m.so", "token"),
    ("pkcs11:token=a", "module-path"),
    ("pkcs11:token=a;type=cert?module-path=/m.so", "type"),
    ("pkcs11:token=a?module-path=/m.so&pin-source=ldap:x", "pin-source"),
    ("pkcs11:token=a?module-name=softhsm2", "module-name"),
])
def test_uri_faults_are_refused_by_name(text, attribute):
    with pytest.raises(Pkcs11UriError) as raised:
        Pkcs11Uri.parse(text)
    assert raised.value.attribute == attribute


def test_pin_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_PIN", "1234")
    assert Pkcs11Uri.parse("pkcs11:token=a?module-path=/m.so&pin-source=env:MY_PIN").pin() == "1234"
    (tmp_path / "pin").write_text("5678\n")
    assert Pkcs11Uri.parse(f"pkcs11:token=a?module-path=/m.so&pin-source=file:{tmp_path / 'pin'}").pin() == "5678"
    monkeypatch.delenv("MY_PIN")
    with pytest.raises(TokenError, match="MY_PIN"):
        Pkcs11Uri.parse("pkcs11:token=a?module-path=/m.so&pin-source=env:MY_PIN").pin()
    shown = Pkcs11Uri.parse("pkcs11:token=a?module-path=/m.so&pin-value=s3cret").display
    assert "s3cret" not in shown


# --- a token ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """A SoftHSM2 token "scepd" of its own; the environment that reaches it (in-process and for
    subprocesses): SOFTHSM2_CONF is read when the module is initialised."""
    require_tool("softhsm2-util")
    if not Path(MODULE).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{MODULE} is missing (make test installs softhsm2)")
        pytest.skip(f"{MODULE} is missing (make test installs softhsm2)")
    pytest.importorskip("pkcs11") if not os.environ.get("CI") else None
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf), "SCEPD_PKCS11_PIN": PIN}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "scepd", "--pin", PIN, "--so-pin", "so-" + PIN],
                   check=True, capture_output=True, env={**os.environ, **env})
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield directory, env


@pytest.fixture(scope="module")
def hsm_instance(token, tmp_path_factory) -> Path:
    _, env = token
    directory = tmp_path_factory.mktemp("hsm-instance")
    done = run_scepd("init", "--dir", str(directory), "--key", "rsa:2048", "--challenge", CHALLENGE, "--pkcs11", BASE, env=env)
    assert done.returncode == 0, done.stderr
    return directory


@pytest.fixture(scope="module")
def hsm_server(hsm_instance, token):
    server = RunningServer(hsm_instance, env=token[1])
    yield server
    server.stop()


def _pki(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["pki", *args], cwd=cwd, capture_output=True, timeout=120)


def _enroll(server: RunningServer, work: Path, cn: str, password: str = CHALLENGE) -> subprocess.CompletedProcess:
    """strongSwan fetches the CA and RA, then enrolls a fresh RSA key as CN=`cn`."""
    require_tool("pki")
    if not (work / "ca.pem").exists():
        fetched = _pki("--scepca", "--url", server.url, "--caout", "ca.pem", "--raout", "ra.pem", "--outform", "pem", cwd=work)
        assert fetched.returncode == 0, fetched.stderr
    gen = _pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "pem", cwd=work)
    (work / f"{cn}.key").write_bytes(gen.stdout)
    return _pki("--scep", "--url", server.url, "--in", f"{cn}.key", "--dn", f"CN={cn}", "--password", password,
                "--cacert-enc", "ra.pem", "--cacert-sig", "ca.pem", "--cipher", "des3", "--outform", "pem", cwd=work)


def test_init_names_token_objects_and_writes_no_key(hsm_instance):
    config = (hsm_instance / "scepd.toml").read_text()
    for name in ("ca", "ra", "rp-encryption", "rp-signing"):
        assert f"object={name}?module-path={MODULE}" in config
    files = [p for p in hsm_instance.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".key"]
    assert not [p for p in files if b"PRIVATE KEY" in p.read_bytes()]


def test_init_refuses_a_token_whose_objects_are_taken(hsm_instance, token, tmp_path):
    done = run_scepd("init", "--dir", str(tmp_path / "again"), "--pkcs11", BASE, env=token[1])
    assert done.returncode != 0 and "labelled ca, ra, rp-encryption, rp-signing already" in done.stderr
    assert not (tmp_path / "again" / "scepd.toml").exists()


def test_token_keys_are_sensitive_and_never_extractable(hsm_instance, token):
    from scepd.ca.keys import load_key
    from scepd.ca.token_keys import KeyNotExtractable, key_attributes

    for name in ("ca", "ra", "rp-encryption", "rp-signing"):
        key = load_key(str(Pkcs11Uri.parse(BASE).with_object(name)))
        assert key_attributes(key) == {"sensitive": True, "extractable": False, "token": True}
        with pytest.raises(KeyNotExtractable):
            key.private_bytes()
        with pytest.raises(KeyNotExtractable):
            key.private_numbers()
    # The same, as the token tells any other PKCS#11 application.
    listed = subprocess.run([require_tool("pkcs11-tool"), "--module", MODULE, "--token-label", "scepd", "--login",
                             "--pin", PIN, "--list-objects", "--type", "privkey"],
                            capture_output=True, text=True, env={**os.environ, **token[1]})
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("never extractable") == 4 and listed.stdout.count("always sensitive") == 4


def test_strongswan_enrolls_against_token_keys_and_openssl_verifies(hsm_server, hsm_instance, tmp_path):
    enrolled = _enroll(hsm_server, tmp_path, "hsm-device")
    assert enrolled.returncode == 0, enrolled.stderr.decode()
    (tmp_path / "cert.pem").write_bytes(enrolled.stdout)
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(hsm_instance / "ca.pem"), str(tmp_path / "cert.pem")],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr


def test_mdm_challenge_with_token_registration_point_keys(hsm_server, hsm_instance, token, tmp_path):
    """The challenge is signed (ES256) by the token's rp-signing key and opened (ECDH-ES) by
    its rp-encryption key."""
    issued = run_scepd("challenge", "issue", "--dir", str(hsm_instance), "--subject", "CN=mdm-device", env=token[1])
    assert issued.returncode == 0, issued.stderr
    enrolled = _enroll(hsm_server, tmp_path, "mdm-device", password=issued.stdout.strip())
    assert enrolled.returncode == 0, enrolled.stderr.decode()


def test_crl_signed_by_the_token_verifies(hsm_server, hsm_instance, tmp_path):
    ca = x509.load_pem_x509_certificate((hsm_instance / "ca.pem").read_bytes())
    key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    answer = httpx.get(f"http://127.0.0.1:{hsm_server.port}/crl/{key_id}.crl")
    assert answer.status_code == 200
    (tmp_path / "ca.crl").write_bytes(answer.content)
    verified = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "ca.crl"), "-CAfile",
                               str(hsm_instance / "ca.pem"), "-noout", "-verify"], capture_output=True, text=True)
    assert verified.returncode == 0 and "verify OK" in verified.stdout + verified.stderr, verified.stderr


def keys_on_disk(directory: Path) -> list[Path]:
    """Every private key file in the whole instance tree, but the `--tls self` web server key
    (tls/server.key, which docs/pki.md says stays a file)."""
    files = [p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory) != Path("tls/server.key")]
    return [p for p in files if p.suffix == ".key" or b"PRIVATE KEY" in p.read_bytes()]


def _openssl_ocsp(server: RunningServer, directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("openssl"), "ocsp", "-issuer", str(directory / "ca.pem"), "-CAfile",
                           str(directory / "ca.pem"), "-url", f"http://127.0.0.1:{server.port}/ocsp", *args],
                          capture_output=True, text=True, timeout=30)


def test_the_ocsp_signer_key_is_made_in_the_token_and_no_key_is_on_disk(hsm_server, hsm_instance, token):
    """After `serve` made the delegated OCSP signer: its key is the token's object
    ocsp-<CA key id>, the responses verify, and the instance tree holds no private key."""
    done = _openssl_ocsp(hsm_server, hsm_instance, "-serial", "0x1234")
    assert "Response verify OK" in done.stderr and "0x1234: unknown" in done.stdout, done.stderr
    ca = x509.load_pem_x509_certificate((hsm_instance / "ca.pem").read_bytes())
    key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    signer = x509.load_pem_x509_certificate((hsm_instance / "ocsp" / f"{key_id}.pem").read_bytes())
    assert not (hsm_instance / "ocsp" / f"{key_id}.key").exists()
    assert keys_on_disk(hsm_instance) == []
    listed = subprocess.run([require_tool("pkcs11-tool"), "--module", MODULE, "--token-label", "scepd", "--login",
                             "--pin", PIN, "--list-objects", "--type", "privkey", "--label", f"ocsp-{key_id}"],
                            capture_output=True, text=True, env={**os.environ, **token[1]})
    assert f"ocsp-{key_id}" in listed.stdout and "never extractable" in listed.stdout, listed.stdout + listed.stderr
    from scepd.ca.keys import load_key

    in_token = load_key(str(Pkcs11Uri.parse(BASE).with_object(f"ocsp-{key_id}")))
    assert in_token.public_key() == signer.public_key()


def test_doctor_checks_the_token_keys(hsm_instance, token):
    done = run_scepd("doctor", "--dir", str(hsm_instance), env=token[1])
    assert "PASS  ca.key_token" in done.stdout + done.stderr
    assert "PASS  ra.key_token" in done.stdout + done.stderr


def test_doctor_names_the_fix_for_a_wrong_pin(hsm_instance, token):
    done = run_scepd("doctor", "--dir", str(hsm_instance), env={**token[1], "SCEPD_PKCS11_PIN": "wrong"})
    out = done.stdout + done.stderr
    assert done.returncode == 2
    assert "refused the PIN from env:SCEPD_PKCS11_PIN" in out and "check the user PIN in $SCEPD_PKCS11_PIN" in out


def test_doctor_names_the_fix_for_a_missing_module(hsm_instance, token):
    missing = BASE.replace(MODULE, "/usr/lib/vendor/libmissing-pkcs11.so")
    uri = str(Pkcs11Uri.parse(missing).with_object("ca"))
    done = run_scepd("doctor", "--dir", str(hsm_instance), env={**token[1], "SCEPD_CA_KEY": uri})
    out = done.stdout + done.stderr
    assert done.returncode == 2
    assert "/usr/lib/vendor/libmissing-pkcs11.so does not exist" in out and "apt-get install softhsm2" in out


@pytest.fixture(scope="module")
def unit_keys(token, hsm_instance):
    """An RSA and an EC key of this process, in the token."""
    from scepd.ca.keys import generate_key

    base = Pkcs11Uri.parse(BASE)
    return (generate_key("rsa:2048", str(base.with_object("unit-rsa"))),
            generate_key("ec:p256", str(base.with_object("unit-ec"))))


def _verify(public, signature, data, algorithm):
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, data, padding.PKCS1v15(), algorithm)
    else:
        public.verify(signature, data, ec.ECDSA(algorithm))


def test_sign_with_resigns_every_builder_with_the_token(unit_keys):
    from scepd.ca.signing import sign_with

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
    now = dt.datetime.now(dt.timezone.utc)
    for key in unit_keys:
        assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
        cert = sign_with(x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                         .serial_number(7).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)),
                         key, hashes.SHA256())
        cert.verify_directly_issued_by(cert)
        crl = sign_with(x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
                        .next_update(now + dt.timedelta(days=1)), key, hashes.SHA256())
        assert crl.is_signature_valid(key.public_key())
        csr = sign_with(x509.CertificateSigningRequestBuilder().subject_name(name), key, hashes.SHA256())
        assert csr.is_signature_valid and csr.public_key() == key.public_key()
        for encoding in (ocsp.OCSPResponderEncoding.HASH, ocsp.OCSPResponderEncoding.NAME):
            response = sign_with(ocsp.OCSPResponseBuilder()
                                 .add_response(cert, cert, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, now, None, None, None)
                                 .responder_id(encoding, cert), key, hashes.SHA256())
            _verify(key.public_key(), response.signature, response.tbs_response_bytes, response.signature_hash_algorithm)
            assert response.serial_number == 7
            if encoding is ocsp.OCSPResponderEncoding.HASH:
                assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
            else:
                assert response.responder_name == name


def test_token_decrypts_and_refuses_like_cryptography(unit_keys):
    key = unit_keys[0]
    for pad in (padding.PKCS1v15(), padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)):
        assert key.decrypt(key.public_key().encrypt(b"k" * 16, pad), pad) == b"k" * 16
    # The envelope's implicit rejection relies on a ValueError for what does not decrypt.
    with pytest.raises(ValueError):
        key.decrypt(b"\x01" * 256, padding.PKCS1v15())
    peer = ec.generate_private_key(ec.SECP256R1())
    assert unit_keys[1].exchange(ec.ECDH(), peer.public_key()) == peer.exchange(ec.ECDH(), unit_keys[1].public_key())


class _CountingToken:
    """A token whose logins are counted."""

    def __init__(self, token) -> None:
        self.token, self.logins = token, 0
        self.label = token.label

    def open(self, **kwargs):
        self.logins += "user_pin" in kwargs
        return self.token.open(**kwargs)


def test_a_refused_pin_is_not_offered_again_until_it_changes(token, tmp_path, monkeypatch):
    """An HSM locks the user PIN after a few wrong ones: after one refusal no request logs in
    again with the same PIN; the named error stays; a corrected PIN file is used at once."""
    from scepd.ca import pkcs11 as p11
    from scepd.protocol.errors import KeyUnavailable

    directory, env = token
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "scepd-pin", "--pin", PIN,
                    "--so-pin", "so-" + PIN], check=True, capture_output=True, env={**os.environ, **env})
    (tmp_path / "pin").write_text("wrong\n")
    uri = Pkcs11Uri.parse(f"pkcs11:token=scepd-pin;object=ca?module-path={MODULE}&pin-source=file:{tmp_path / 'pin'}")
    conn = p11.connection(uri)
    conn.reset()  # SoftHSM lists a token made since C_Initialize only after the next one
    real = p11.Connection._token
    counted: list[_CountingToken] = []
    monkeypatch.setattr(p11.Connection, "_token", lambda self: counted[0] if counted else counted.append(
        _CountingToken(real(self))) or counted[0])
    generation = conn.module.generation
    for _ in range(5):
        with pytest.raises(KeyUnavailable, match="refused the PIN from file:.*not offered again"):
            conn.run(uri, lambda key: key)
    assert counted[0].logins == 1
    assert conn.module.generation == generation  # nor is the module re-initialised for it
    (tmp_path / "pin").write_text(PIN + "\n")
    with pytest.raises(KeyUnavailable, match="no private key object"):  # logged in: the object is what is missing
        conn.run(uri, lambda key: key)
    assert counted[0].logins == 2


def test_reinitialising_a_module_waits_for_a_call_on_another_connection(unit_keys):
    """C_Finalize ends every session of the module: another connection's call in progress
    finishes first."""
    import threading

    from scepd.ca import pkcs11 as p11

    uri_a = Pkcs11Uri.parse(str(Pkcs11Uri.parse(BASE).with_object("unit-rsa")))
    uri_b = Pkcs11Uri.parse(BASE.replace("pin-source=env:SCEPD_PKCS11_PIN", f"pin-value={PIN}")).with_object("unit-rsa")
    conn_a, conn_b = p11.connection(uri_a), p11.connection(uri_b)
    assert conn_a is not conn_b and conn_a.module is conn_b.module
    inside, release, results = threading.Event(), threading.Event(), []

    def slow(key):
        inside.set()
        release.wait(10)
        return key.label  # the handle still works: its session was not ended under it

    caller = threading.Thread(target=lambda: results.append(conn_a.run(uri_a, slow)))
    caller.start()
    assert inside.wait(10)
    generation = conn_a.module.generation
    resetting = threading.Thread(target=conn_b.reset)
    resetting.start()
    resetting.join(0.5)
    assert resetting.is_alive() and conn_a.module.generation == generation
    release.set()
    caller.join(10)
    resetting.join(10)
    assert results == ["unit-rsa"] and conn_a.module.generation == generation + 1


def test_a_decryption_the_token_fails_is_a_value_error_not_a_retry(unit_keys, monkeypatch):
    """CKR_FUNCTION_FAILED or CKR_DEVICE_ERROR for a ciphertext: the envelope's implicit
    rejection gets its ValueError; no re-initialisation, no second try, no KeyUnavailable
    (a 503 for some ciphertexts only would be an oracle)."""
    import pkcs11 as binding_module

    key = unit_keys[0]
    for refusal in (binding_module.exceptions.FunctionFailed, binding_module.exceptions.DeviceError):
        calls = []

        class Refusing:
            def decrypt(self, *args, **kwargs):
                calls.append(1)
                raise refusal()

        monkeypatch.setattr(key._connection, "_handle", lambda uri: Refusing())
        generation = key._connection.module.generation
        with pytest.raises(ValueError):
            key.decrypt(b"\x01" * 256, padding.PKCS1v15())
        assert calls == [1] and key._connection.module.generation == generation
        monkeypatch.undo()
    assert key.decrypt(key.public_key().encrypt(b"k" * 16, padding.PKCS1v15()), padding.PKCS1v15()) == b"k" * 16


def test_a_token_gone_while_serving_is_named_and_comes_back(hsm_server, token, tmp_path):
    """Last in this module: it takes the token away from the running server."""
    tokens = token[0] / "tokens"
    away = token[0] / "tokens.away"
    tokens.rename(away)
    try:
        enrolled = _enroll(hsm_server, tmp_path, "while-away")
        assert enrolled.returncode != 0
        assert b"HTTP 503" in enrolled.stderr
        lines = [line for line in hsm_server.log_lines() if '"code": "KeyUnavailable"' in line]
        assert lines and '"http_status": 503' in lines[-1]
        # A nonce is signed for at every query, by the signer's key in the token: tryLater.
        asked = _openssl_ocsp(hsm_server, hsm_server.directory, "-serial", "0x4321")
        assert "Responder Error: trylater" in asked.stdout, asked.stdout + asked.stderr
        assert not [line for line in hsm_server.log_lines() if "internalError" in line]
    finally:
        away.rename(tokens)
    assert not [line for line in hsm_server.log_lines() if "Traceback" in line and "KeyUnavailable" in line]
    again = _enroll(hsm_server, tmp_path, "after-return")
    assert again.returncode == 0, again.stderr.decode()


def test_rollover_and_ra_renewal_make_their_keys_in_the_token(token, tmp_path):
    """The next CA's and a renewed RA's keys are made beside the old ones, in the token, and
    the instance keeps serving from them: no key file appears."""
    directory, env = token
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "scepd-rollover", "--pin", PIN,
                    "--so-pin", "so-" + PIN], check=True, capture_output=True, env={**os.environ, **env})
    base = BASE.replace("token=scepd?", "token=scepd-rollover?")
    d = tmp_path / "rolled"
    assert run_scepd("init", "--dir", str(d), "--key", "ec:p256", "--challenge", CHALLENGE, "--pkcs11", base,
                     env=env).returncode == 0
    for command in (("ra", "renew"), ("ca", "rollover"), ("ca", "activate-next")):
        done = run_scepd(*command, "--dir", str(d), env=env)
        assert done.returncode == 0, (command, done.stderr)
    config = (d / "scepd.toml").read_text()
    assert config.count("token=scepd-rollover;object=ca-") >= 1 and config.count("token=scepd-rollover;object=ra-") >= 2
    # An RA whose key is in the token already, issued by the active CA: `ra import` names it.
    from scepd.ca.keys import generate_key
    from scepd.registry.instance import Instance, load_key_material

    from scepd.ca.pkcs11 import connection

    ra_uri = str(Pkcs11Uri.parse(base).with_object("imported-ra"))
    connection(Pkcs11Uri.parse(ra_uri)).reset()  # SoftHSM lists a token made since C_Initialize only after the next one
    ra_key = generate_key("rsa:2048", ra_uri)
    material = load_key_material(Instance.open(d))
    ra_cert = material.ca.issue_ra_certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imported RA")]), ra_key)
    (tmp_path / "imported-ra.pem").write_bytes(ra_cert.public_bytes(serialization.Encoding.PEM))
    imported = run_scepd("ra", "import", str(tmp_path / "imported-ra.pem"), ra_uri, "--dir", str(d), env=env)
    assert imported.returncode == 0, imported.stderr
    assert Instance.open(d).config.ra.key == ra_uri
    doctor = run_scepd("doctor", "--dir", str(d), "--json", env=env)
    assert not [c for c in json.loads(doctor.stdout) if c["status"] == "FAIL"], doctor.stdout
    server = RunningServer(d, env=env)
    try:
        from scepd.client import ScepClient
        from scepd.protocol import PkiStatus

        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "after-rollover")])
        assert ScepClient(server.url).get_ca_certs().ra == ra_cert  # the request is encrypted to the token's RA key
        result = ScepClient(server.url).enroll(rsa.generate_private_key(65537, 2048), subject, challenge=CHALLENGE)
    finally:
        server.stop()
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    # `serve` made the OCSP signers of the previous and the active CA: in the token too.
    assert len(list((d / "ocsp").glob("*.pem"))) == 2
    assert keys_on_disk(d) == []
    # Signed by the CA the rollover made, whose key is the token's object ca-<stamp>.
    files = Instance.open(d).config.ca
    assert files.key.startswith("pkcs11:") and "object=ca-" in files.key and files.previous_keys
    result.certificate.verify_directly_issued_by(x509.load_pem_x509_certificate((d / files.certificate).read_bytes()))


def test_a_key_beside_a_token_key_is_made_in_the_token_whatever_the_schemes_case(hsm_instance, token):
    """RFC 3986: a URI's scheme is case-insensitive; `PKCS11:` names a token key as well."""
    from scepd.registry.instance import Instance
    from scepd.registry.keyops import new_key

    beside = "PKCS11:" + str(Pkcs11Uri.parse(BASE).with_object("ca"))[len("pkcs11:"):]
    key, entry, stem = new_key(Instance.open(hsm_instance), "ec:p256", beside, "case-test")
    assert entry.startswith("pkcs11:") and "object=case-test" in entry and stem == "case-test"
    assert not (hsm_instance / "case-test.key").exists()
