"""The command line and the instance: what an administrator types and sees."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest
from conftest import VECTORS, free_port, openssl_verify, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scepd.ca.authority import CertificateAuthority
from scepd.ca.keys import KeyPair
from scepd.ca.templates import Template, TemplateMapping
from scepd.challenge import FirstAccepting, StaticChallengeValidator
from scepd.clock import FixedClock
from scepd.protocol import FailInfo, PkiStatus
from scepd.protocol.message import parse_pki_message
from scepd.protocol.requests import RequestPolicy
from scepd.registry.config import ConfigError, load_config
from scepd.registry.instance import KeyMaterial
from scepd.store import Store
from scepd.wiring import build_deciders

HELP_COMMANDS = [
    [], ["init"], ["info"], ["serve"], ["otp"], ["otp", "new"], ["client"],
    ["client", "getcacaps"], ["client", "getcacert"], ["client", "enroll"],
]


@pytest.mark.parametrize("words", HELP_COMMANDS, ids=lambda w: " ".join(w) or "scepd")
def test_every_command_has_help(words):
    result = run_scepd(*words, "--help")
    assert result.returncode == 0
    assert "usage: scepd" in result.stdout


def test_init_writes_private_files_0600_and_refuses_to_overwrite(tmp_path):
    d = tmp_path / "inst"
    first = run_scepd("init", "--dir", str(d), "--key", "ec:p256", "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["challenge"] and info["ca_sha256_fingerprint"].count(":") == 31
    for private in ("ca.key", "ra.key", "scepd.toml"):
        assert stat.S_IMODE((d / private).stat().st_mode) == 0o600, private
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    ra = x509.load_pem_x509_certificate((d / "ra.pem").read_bytes())
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ra.public_key(), rsa.RSAPublicKey)  # SCEP key transport needs RSA
    ku = ra.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment
    before = (d / "ca.key").read_bytes()
    again = run_scepd("init", "--dir", str(d))
    assert again.returncode == 2
    assert "exists already" in again.stderr
    assert (d / "ca.key").read_bytes() == before


def test_encrypted_keys_need_the_passphrase_to_serve(tmp_path):
    d = tmp_path / "enc"
    env = {"SCEPD_KEY_PASSPHRASE": "correct horse"}
    assert run_scepd("init", "--dir", str(d), "--key", "rsa:2048", "--encrypt-keys", env=env).returncode == 0
    assert b"ENCRYPTED" in (d / "ca.key").read_bytes()
    missing = run_scepd("info", "--dir", str(d), env={"SCEPD_KEY_PASSPHRASE": ""})
    assert missing.returncode == 2
    assert "SCEPD_KEY_PASSPHRASE" in missing.stderr
    assert run_scepd("info", "--dir", str(d), env=env).returncode == 0


def test_serve_refuses_to_start_without_the_ra_key_and_names_it(tmp_path):
    d = tmp_path / "broken"
    assert run_scepd("init", "--dir", str(d), "--key", "rsa:2048").returncode == 0
    (d / "ra.key").unlink()
    result = run_scepd("serve", "--dir", str(d), "--port", str(free_port()), timeout=30)
    assert result.returncode == 2
    assert "ra.key" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_an_instance_says_how_to_make_one(tmp_path):
    result = run_scepd("serve", "--dir", str(tmp_path / "nothing"), timeout=30)
    assert result.returncode == 2
    assert "scepd init" in result.stderr


def test_config_env_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "scepd.toml"
    path.write_text('[server]\nport = 9000\n[templates.Legacy]\nmin_rsa_bits = 1024\n')
    config = load_config(path, environ={"SCEPD_SERVER_PORT": "9100", "SCEPD_TEMPLATE_MAPPING_SIGNATURETEMPLATE": "Legacy"})
    assert config.server.port == 9100
    assert config.templates["Legacy"].min_rsa_bits == 1024
    assert config.templates["Legacy"].validity_days == 365  # defaults fill the rest
    assert "IPSECIntermediateOffline" in config.templates  # built-ins stay
    assert config.template_mapping.SignatureTemplate == "Legacy"
    path.write_text('[server]\nprot = 9000\n')
    with pytest.raises(ConfigError, match="prot"):
        load_config(path, environ={})
    path.write_text('[templates.X]\nkey_usage = ["digitalSignature", "flying"]\n')
    with pytest.raises(ConfigError, match="flying"):
        load_config(path, environ={})


def test_enrollment_threads_follow_what_an_enrollment_waits_on(tmp_path):
    path = tmp_path / "scepd.toml"
    path.write_text("")
    assert load_config(path, environ={}).enrollment_threads == 2  # local verification, SQLite
    for environ in ({"SCEPD_CHALLENGE_MODE": "remote"}, {"SCEPD_CHALLENGE_WEBHOOK_URL": "https://mdm.example/allow"},
                    {"SCEPD_DATABASE_URL": "postgresql://scepd@db/scepd"}):
        assert load_config(path, environ=environ).enrollment_threads == 16, environ
    assert load_config(path, environ={"SCEPD_SERVER_THREADS": "5", "SCEPD_CHALLENGE_MODE": "remote"}).enrollment_threads == 5
    path.write_text("[server]\nthreads = -1\n")
    with pytest.raises(ConfigError, match="threads"):
        load_config(path, environ={})


def test_client_enroll_command_writes_a_verifiable_certificate(server, ca_pem, tmp_path):
    from conftest import CHALLENGE

    out = tmp_path / "dev.pem"
    result = run_scepd(
        "client", "enroll", server.url, "--subject", "CN=cli-device,O=Example", "--san", "dns:cli.example",
        "--challenge", CHALLENGE, "--key", "ec:p256", "--cipher", "des3", "--digest", "sha1", "--get",
        "--cert-out", str(out),
    )
    assert result.returncode == 0, result.stderr
    assert openssl_verify(ca_pem, out.read_bytes(), tmp_path).returncode == 0
    assert stat.S_IMODE(out.with_suffix(".key").stat().st_mode) == 0o600
    refused = run_scepd("client", "enroll", server.url, "--subject", "CN=x", "--challenge", "nope",
                        "--cert-out", str(tmp_path / "x.pem"))
    assert refused.returncode == 1
    assert "ChallengePasswordIncorrect" in refused.stderr
    caps = run_scepd("client", "getcacaps", server.url)
    assert "POSTPKIOPERATION" in caps.stdout.split()


def test_client_against_nothing_exits_4(tmp_path):
    result = run_scepd("client", "getcacaps", f"http://127.0.0.1:{free_port()}/scep", "--timeout", "2")
    assert result.returncode == 4
    assert "Traceback" not in result.stderr


# --- the real Apple request through the service -------------------------------------------


def test_apple_request_reaches_the_challenge_check(tmp_path):
    """The captured iOS PKCSReq (version-2 CSR, RSA-1024, DES3, SHA-1) through the whole
    service, with the vector's CA acting as CA and RA. It carries no challenge, so it ends at
    ChallengePasswordMissing after every step before it (signature, decryption, the version-2
    CSR and its proof of possession); its 2016 signingTime gets badTime with a 24 h skew."""
    key_path = tmp_path / "ca.key"
    subprocess.run(["openssl", "pkey", "-in", str(VECTORS / "apple-ios-pkcsreq" / "ca.key"), "-passin", "pass:",
                    "-out", str(key_path)], check=True)
    pair = KeyPair.load(VECTORS / "apple-ios-pkcsreq" / "ca.pem", key_path)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_schema()
    request = (VECTORS / "apple-ios-pkcsreq" / "PKCSReq.der").read_bytes()
    import datetime as dt

    signed_at = dt.datetime(2016, 5, 31, tzinfo=dt.timezone.utc)  # the capture's signingTime is that day

    def answer(template, now=signed_at + dt.timedelta(hours=12)):
        service, _ = build_deciders(
            material=KeyMaterial(ca=CertificateAuthority(pair), ra=pair), store=store,
            validator=FirstAccepting((StaticChallengeValidator("x"),)),
            templates={"Apple": template}, mapping=TemplateMapping("Apple", "Other", "Other"),
            policy=RequestPolicy(max_clock_skew=dt.timedelta(hours=24), allow_md5=False, allow_des=True),
            clock=FixedClock(now),
        )
        result = service.pki_operation(request)
        reply = parse_pki_message(result.body, (pair.certificate,))
        assert reply.is_verified and reply.pki_status is PkiStatus.FAILURE
        assert reply.transaction_id == "A13090761A30F66664F85D37433D2065E1112BA1"
        assert reply.digest_algorithm == "sha1"
        return reply

    # Its CSR asks for digitalSignature alone: NDES's SignatureTemplate is the one used.
    legacy = answer(Template(name="Apple", min_rsa_bits=1024))
    assert legacy.fail_info is FailInfo.BAD_REQUEST
    assert legacy.fail_info_text.startswith("ChallengePasswordMissing")
    late = answer(Template(name="Apple", min_rsa_bits=1024), now=signed_at + dt.timedelta(days=3))
    assert late.fail_info is FailInfo.BAD_TIME
    assert late.fail_info_text.startswith("MessageTimeInvalid") and "2016-05-31" in late.fail_info_text
