"""A CA under someone else's root (issue 13, part 1): `init --subordinate`, the root signs
ca.csr with openssl exactly as docs/pki.md says, `ca install`; the chain in GetCACert, AIA
in what is issued, `init --import-ca`, `ra import`, and the rollover of a subordinate; all
through a running `scepd serve` and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import (
    CHALLENGE,
    SCEPD,
    RunningServer,
    name,
    new_key,
    pem,
    require_tool,
    run_scepd,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from scepd.client import ScepClient
from scepd.protocol import signed
from scepd.protocol.types import PkiStatus

DOCS = Path(__file__).resolve().parent.parent / "docs" / "pki.md"


def walkthrough_blocks() -> list[str]:
    """The sh blocks of docs/pki.md's walk-through section, in order."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Walk-through", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.DOTALL)


def shell_env(tmp: Path) -> dict:
    """PATH with a `scepd` that is this checkout's, whatever is installed."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "scepd"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m scepd.cli "$@"\n')
    shim.chmod(0o755)
    import os

    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "SCEPD_DIR": ""}


def sh(script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def sign_csr(work: Path, csr: str, out: str, ext: str = "subca.ext", ca: str = "root") -> Path:
    """What the walk-through does, for another CSR or another extfile."""
    openssl("x509", "-req", "-in", csr, "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "1825",
            "-sha256", "-extfile", ext, "-out", out, cwd=work)
    return work / out


def verify_chain(work: Path, cert_pem: bytes, untrusted: str = "issuing.pem") -> subprocess.CompletedProcess:
    (work / "leaf.pem").write_bytes(cert_pem)
    return subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "-untrusted", untrusted, "leaf.pem"],
                          cwd=work, capture_output=True, text=True)


def wait_until(predicate, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("the server did not pick up the change")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- the walk-through of docs/pki.md ---------------------------------------------------------


@pytest.fixture(scope="module")
def walked(tmp_path_factory) -> Path:
    """A work directory after running docs/pki.md's walk-through verbatim: root.pem and
    root.key, subca.ext, issuing.pem and the complete instance in scepd/."""
    require_tool("openssl")
    work = tmp_path_factory.mktemp("walkthrough")
    env = shell_env(work)
    blocks = walkthrough_blocks()
    assert len(blocks) == 2, "the walk-through has a test-root block and the signing block"
    for block in blocks:
        result = sh(block, work, env)
        assert result.returncode == 0, f"{block}\n{result.stderr}"
    return work


@pytest.fixture(scope="module")
def challenge(walked) -> str:
    """The walk-through's instance has a random static challenge."""
    return json.loads(run_scepd("info", "--json", "--dir", str(walked / "scepd")).stdout)["challenge"]


@pytest.fixture(scope="module")
def sub_server(walked):
    srv = RunningServer(walked / "scepd")
    yield srv
    srv.stop()


def test_an_instance_awaiting_its_certificate_is_not_servable(tmp_path):
    d = tmp_path / "waiting"
    made = run_scepd("init", "--subordinate", "--dir", str(d), "--key", "rsa:2048")
    assert made.returncode == 0, made.stderr
    csr = x509.load_pem_x509_csr((d / "ca.csr").read_bytes())
    assert csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert csr.extensions.get_extension_for_class(x509.BasicConstraints).critical
    usage = csr.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert not (d / "ca.pem").exists() and not (d / "ra.pem").exists()
    for command in ("serve", "doctor", "info"):
        result = run_scepd(command, "--dir", str(d), timeout=30)
        assert result.returncode != 0, command
        said = result.stderr + result.stdout  # doctor's FAIL lines are its output
        assert "awaits its CA certificate" in said and "scepd ca install SIGNED.pem" in said, said


def test_the_walkthrough_completes_the_instance(walked):
    d = walked / "scepd"
    issuing, root = load(walked / "issuing.pem"), load(walked / "root.pem")
    assert load(d / "ca.pem") == issuing
    assert root in x509.load_pem_x509_certificates((d / "ca-chain.pem").read_bytes())
    assert 'chain = "ca-chain.pem"' in (d / "scepd.toml").read_text() and 'request = ""' in (d / "scepd.toml").read_text()
    load(d / "ra.pem").verify_directly_issued_by(issuing)
    doctor = run_scepd("doctor", "--dir", str(d))
    assert "PASS  ca.chain: CN=Example SCEP Issuing CA,O=Example -> CN=Example Root CA,O=Example (self-signed)" in doctor.stdout, doctor.stdout


def test_getcacert_carries_root_issuing_ca_and_ra(walked, sub_server):
    response = httpx.get(sub_server.url, params={"operation": "GetCACert"})
    assert response.headers["content-type"] == "application/x-x509-ca-ra-cert"
    offered = set(signed.parse_certs_only(response.content))
    d = walked / "scepd"
    assert offered == {load(walked / "root.pem"), load(walked / "issuing.pem"), load(d / "ra.pem")}


def test_strongswan_enrolls_under_the_subordinate_and_openssl_verifies_to_the_root(walked, sub_server, challenge):
    require_tool("pki")
    work = walked / "strongswan"
    work.mkdir()

    def pki(*args):
        return subprocess.run(["pki", *args], cwd=work, capture_output=True, timeout=120)

    fetched = pki("--scepca", "--url", sub_server.url, "--caout", "ca.pem", "--raout", "ra.pem", "--outform", "pem")
    assert fetched.returncode == 0, fetched.stderr.decode()
    # strongSwan writes each CA certificate of GetCACert: the root is among them.
    cas = {load(p) for p in work.glob("ca*.pem")}
    assert cas == {load(walked / "root.pem"), load(walked / "issuing.pem")}
    gen = pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "pem")
    (work / "device.key").write_bytes(gen.stdout)
    enroll = pki("--scep", "--url", sub_server.url, "--in", "device.key", "--dn", "CN=strongswan-under-root",
                 "--password", challenge, "--cacert-enc", "ra.pem", "--cacert-sig", str(walked / "issuing.pem"),
                 "--cacert", str(walked / "root.pem"), "--cipher", "des3", "--outform", "pem")
    assert enroll.returncode == 0, enroll.stderr.decode()
    verified = verify_chain(walked, enroll.stdout)
    assert verified.returncode == 0, verified.stderr
    # The root alone does not verify it: the issuing CA is needed, as a chain.
    alone = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "leaf.pem"], cwd=walked, capture_output=True, text=True)
    assert alone.returncode != 0


def test_issued_certificates_carry_aia_and_its_ca_issuers_url_serves_the_ca(walked, sub_server, challenge):
    client = ScepClient(sub_server.url)
    cas = client.get_ca_certs()
    issuing = load(walked / "issuing.pem")
    assert cas.ca == issuing
    result = client.enroll(new_key(), name("aia-device"), challenge=challenge, ca=cas)
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    # The RA was issued by `ca install`, when the configuration named port 8080 ([server]
    # public_url empty); the device's certificate by the server on its own port.
    for cert, base in ((result.certificate, f"http://127.0.0.1:{sub_server.port}"), (cas.ra, "http://127.0.0.1:8080")):
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        urls = {d.access_method: d.access_location.value.replace(base, f"http://127.0.0.1:{sub_server.port}") for d in aia}
        base = f"http://127.0.0.1:{sub_server.port}"
        # The RA is not in the store, so the responder would answer unknown for it: no OCSP URL.
        assert urls.get(AuthorityInformationAccessOID.OCSP) == (f"{base}/ocsp" if cert is result.certificate else None)
        ca_issuers = urls[AuthorityInformationAccessOID.CA_ISSUERS]
        assert re.fullmatch(rf"{base}/ca/[0-9a-f]{{40}}\.crt", ca_issuers)
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert "/crl/" in cdp[0].full_name[0].value
        fetched = httpx.get(ca_issuers)
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "application/pkix-cert"
        assert x509.load_der_x509_certificate(fetched.content) == issuing
    assert verify_chain(walked, pem(result.certificate)).returncode == 0
    missing = httpx.get(f"http://127.0.0.1:{sub_server.port}/ca/{'0' * 40}.crt")
    assert missing.status_code == 404


def test_info_shows_the_chain(walked):
    info = run_scepd("info", "--dir", str(walked / "scepd"), "--json")
    assert info.returncode == 0, info.stderr
    chain = json.loads(info.stdout)["chain"]
    assert [c["subject"] for c in chain] == ["CN=Example SCEP Issuing CA,O=Example", "CN=Example Root CA,O=Example"]
    assert chain[0]["issuer"] == chain[1]["subject"] == chain[1]["issuer"]
    assert all(c["not_after"] and len(c["sha256_fingerprint"]) == 95 for c in chain)
    text = run_scepd("info", "--dir", str(walked / "scepd"))
    assert "chain[1]:        CN=Example Root CA,O=Example" in text.stderr


def test_doctor_fails_a_chain_that_no_longer_leads_to_the_root(walked, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(walked / "scepd", copy)
    # Another root with the same name: the link's signature no longer verifies.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem", "-days", "30",
            "-subj", "/O=Example/CN=Example Root CA", cwd=tmp_path)
    shutil.copy(tmp_path / "other.pem", copy / "ca-chain.pem")
    doctor = run_scepd("doctor", "--dir", str(copy))
    assert doctor.returncode == 2
    assert "FAIL  ca.chain: bad_signature:" in doctor.stdout, doctor.stdout
    (copy / "ca-chain.pem").write_bytes(b"")
    doctor = run_scepd("doctor", "--dir", str(copy))
    assert "[ca] chain" in doctor.stdout and "FAIL" in doctor.stdout


# --- what ca install refuses -------------------------------------------------------------------


@pytest.fixture
def waiting(walked, tmp_path) -> Path:
    """A fresh instance awaiting its certificate, with the walk-through's root beside it."""
    for f in ("root.pem", "root.key", "subca.ext"):
        shutil.copy(walked / f, tmp_path / f)
    made = run_scepd("init", "--subordinate", "--dir", str(tmp_path / "scepd"), "--key", "ec:p256",
                     "--ca-subject", "CN=Refusing CA")
    assert made.returncode == 0, made.stderr
    return tmp_path


def install(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SCEPD, "ca", "install", *args, "--dir", "scepd"], cwd=work, capture_output=True, text=True,
                          timeout=60)


def assert_refused(result: subprocess.CompletedProcess, rule: str, work: Path) -> None:
    assert result.returncode != 0
    assert f"error: {rule}:" in result.stderr, result.stderr
    assert not (work / "scepd" / "ca.pem").exists() and not (work / "scepd" / "ra.pem").exists()


def test_install_refuses_a_certificate_for_another_key(waiting):
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.csr",
            "-subj", "/CN=Refusing CA", cwd=waiting)
    sign_csr(waiting, "other.csr", "other.pem")
    assert_refused(install(waiting, "other.pem", "--chain", "root.pem"), "key_mismatch", waiting)


def test_install_refuses_a_certificate_that_is_not_a_ca(waiting):
    (waiting / "leaf.ext").write_text("basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n")
    sign_csr(waiting, "scepd/ca.csr", "leaf.pem", ext="leaf.ext")
    assert_refused(install(waiting, "leaf.pem", "--chain", "root.pem"), "not_a_ca", waiting)
    (waiting / "nosign.ext").write_text("basicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature\n")
    sign_csr(waiting, "scepd/ca.csr", "nosign.pem", ext="nosign.ext")
    assert_refused(install(waiting, "nosign.pem", "--chain", "root.pem"), "no_key_cert_sign", waiting)


def test_install_refuses_a_chain_that_does_not_lead_to_a_self_signed_root(waiting):
    # An intermediate under the root signs our CSR; the chain given holds only the intermediate.
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "mid.key", "-out", "mid.csr",
            "-subj", "/CN=Example Intermediate", cwd=waiting)
    sign_csr(waiting, "mid.csr", "mid.pem", ext=intermediate_ext(waiting, 1))
    sign_csr(waiting, "scepd/ca.csr", "issuing.pem", ca="mid")
    assert_refused(install(waiting, "issuing.pem", "--chain", "mid.pem"), "issuer_missing", waiting)
    assert_refused(install(waiting, "issuing.pem"), "issuer_missing", waiting)
    # The whole path, in any order, is taken.
    (waiting / "chain.pem").write_bytes((waiting / "root.pem").read_bytes() + (waiting / "mid.pem").read_bytes())
    done = install(waiting, "issuing.pem", "--chain", "chain.pem")
    assert done.returncode == 0, done.stderr
    info = json.loads(run_scepd("info", "--json", "--dir", str(waiting / "scepd")).stdout)
    assert [c["subject"] for c in info["chain"]] == ["CN=Refusing CA", "CN=Example Intermediate", "CN=Example Root CA,O=Example"]


def intermediate_ext(work: Path, pathlen: int) -> str:
    (work / f"mid{pathlen}.ext").write_text(f"basicConstraints = critical, CA:TRUE, pathlen:{pathlen}\n"
                                            "keyUsage = critical, keyCertSign, cRLSign\n")
    return f"mid{pathlen}.ext"


def test_install_refuses_a_ca_below_an_intermediate_whose_pathlen_forbids_it(waiting):
    # pathlen:0 on the intermediate: it may sign end entities only, so openssl refuses every
    # certificate our CA would issue below it.
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "mid.key", "-out", "mid.csr",
            "-subj", "/CN=Example Leaf-only Intermediate", cwd=waiting)
    sign_csr(waiting, "mid.csr", "mid.pem", ext=intermediate_ext(waiting, 0))
    sign_csr(waiting, "scepd/ca.csr", "issuing.pem", ca="mid")
    (waiting / "chain.pem").write_bytes((waiting / "mid.pem").read_bytes() + (waiting / "root.pem").read_bytes())
    refused = install(waiting, "issuing.pem", "--chain", "chain.pem")
    assert_refused(refused, "path_length_exceeded", waiting)
    assert "pathlen:0" in refused.stderr
    # What openssl says of a certificate issued under it: the rule is the relying parties'.
    (waiting / "leaf.ext").write_text("basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "issuing.key", "-out", "issuing.csr",
            "-subj", "/CN=Probe CA", cwd=waiting)
    sign_csr(waiting, "issuing.csr", "probe-ca.pem", ext="subca.ext", ca="mid")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "probe.key", "-out", "probe.csr",
            "-subj", "/CN=probe", cwd=waiting)
    shutil.copy(waiting / "issuing.key", waiting / "probe-ca.key")
    sign_csr(waiting, "probe.csr", "probe.pem", ext="leaf.ext", ca="probe-ca")
    (waiting / "untrusted.pem").write_bytes((waiting / "mid.pem").read_bytes() + (waiting / "probe-ca.pem").read_bytes())
    verified = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "-untrusted", "untrusted.pem", "probe.pem"],
                              cwd=waiting, capture_output=True, text=True)
    assert verified.returncode != 0 and "path length" in verified.stdout + verified.stderr
    # The same CA under an intermediate with pathlen:1 is taken.
    sign_csr(waiting, "mid.csr", "mid.pem", ext=intermediate_ext(waiting, 1))
    sign_csr(waiting, "scepd/ca.csr", "issuing.pem", ca="mid")
    (waiting / "chain.pem").write_bytes((waiting / "mid.pem").read_bytes() + (waiting / "root.pem").read_bytes())
    done = install(waiting, "issuing.pem", "--chain", "chain.pem")
    assert done.returncode == 0, done.stderr


def test_install_and_import_refuse_a_ca_that_may_not_sign_crls(waiting):
    (waiting / "nocrl.ext").write_text("basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, digitalSignature\n")
    sign_csr(waiting, "scepd/ca.csr", "nocrl.pem", ext="nocrl.ext")
    assert_refused(install(waiting, "nocrl.pem", "--chain", "root.pem"), "no_crl_sign", waiting)
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "imported.key", "-out", "imported.csr",
            "-subj", "/CN=No CRL CA", cwd=waiting)
    sign_csr(waiting, "imported.csr", "imported.pem", ext="nocrl.ext")
    refused = run_scepd("init", "--import-ca", str(waiting / "imported.pem"), str(waiting / "imported.key"), "--chain",
                        str(waiting / "root.pem"), "--dir", str(waiting / "imported"))
    assert refused.returncode != 0 and "error: no_crl_sign:" in refused.stderr, refused.stderr
    assert not (waiting / "imported" / "scepd.toml").exists()


def test_a_failed_install_writes_nothing_and_runs_again(waiting):
    sign_csr(waiting, "scepd/ca.csr", "issuing.pem")
    d = waiting / "scepd"
    (d / "scepd.db").mkdir()  # the database cannot be made: complete_instance fails at its end
    failed = install(waiting, "issuing.pem", "--chain", "root.pem")
    assert failed.returncode == 2 and "error: incomplete: scepd ca install failed and wrote nothing" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr
    # What was there before; scepd.log is the audit trail, which records the failed attempt.
    assert sorted(p.name for p in d.rglob("*") if p.is_file()) == ["ca.csr", "ca.key", "scepd.log", "scepd.toml"]
    (d / "scepd.db").rmdir()
    (d / "ra.key").write_text("left by an install that was killed\n")  # set aside, not in the way
    done = install(waiting, "issuing.pem", "--chain", "root.pem")
    assert done.returncode == 0, done.stderr
    assert load(d / "ca.pem") == load(waiting / "issuing.pem")
    assert [p.read_text() for p in d.glob("ra.key.interrupted-*")] == ["left by an install that was killed\n"]
    doctor = run_scepd("doctor", "--dir", str(d))
    assert "FAIL" not in doctor.stdout and "PASS  ca.chain" in doctor.stdout, doctor.stdout


def test_a_failed_import_writes_nothing_and_runs_again(waiting):
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "imported.key", "-out", "imported.csr",
            "-subj", "/CN=Retried Import CA", cwd=waiting)
    sign_csr(waiting, "imported.csr", "imported.pem")
    target = waiting / "imported"
    (target / "scepd.db").mkdir(parents=True)
    args = ("init", "--import-ca", str(waiting / "imported.pem"), str(waiting / "imported.key"), "--chain",
            str(waiting / "root.pem"), "--dir", str(target))
    failed = run_scepd(*args)
    assert failed.returncode == 2 and "error: incomplete: scepd init --import-ca failed" in failed.stderr, failed.stderr
    assert [p.name for p in target.iterdir()] == ["scepd.db"]
    (target / "scepd.db").rmdir()
    done = run_scepd(*args)
    assert done.returncode == 0, done.stderr


def test_install_refuses_an_expired_certificate(waiting):
    csr = x509.load_pem_x509_csr((waiting / "scepd" / "ca.csr").read_bytes())
    root = load(waiting / "root.pem")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    root_key = load_pem_private_key((waiting / "root.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    expired = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(root.subject).public_key(csr.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=30))
               .not_valid_after(now - dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(root_key, hashes.SHA256()))
    (waiting / "expired.pem").write_bytes(pem(expired))
    assert_refused(install(waiting, "expired.pem", "--chain", "root.pem"), "expired", waiting)


# --- an imported CA, its rollover, the RA --------------------------------------------------------


@pytest.fixture(scope="module")
def imported(walked, tmp_path_factory) -> Path:
    """An issuing CA made with openssl under the walk-through's root, imported with its key."""
    work = tmp_path_factory.mktemp("imported")
    for f in ("root.pem", "root.key", "subca.ext"):
        shutil.copy(walked / f, work / f)
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "issuing.key", "-out", "issuing.csr",
            "-subj", "/CN=Imported Issuing CA", cwd=work)
    sign_csr(work, "issuing.csr", "issuing.pem")
    wrong = run_scepd("init", "--import-ca", str(work / "issuing.pem"), str(work / "root.key"), "--chain",
                      str(work / "root.pem"), "--dir", str(work / "wrong"))
    assert wrong.returncode != 0 and "error: key_mismatch:" in wrong.stderr, wrong.stderr
    made = run_scepd("init", "--import-ca", str(work / "issuing.pem"), str(work / "issuing.key"), "--chain",
                     str(work / "root.pem"), "--dir", str(work / "scepd"), "--challenge", CHALLENGE)
    assert made.returncode == 0, made.stderr
    return work


def test_import_ca_serves_and_issues_under_the_root(imported):
    server = RunningServer(imported / "scepd")
    try:
        client = ScepClient(server.url)
        cas = client.get_ca_certs()
        assert cas.ca == load(imported / "issuing.pem") and load(imported / "root.pem") in cas.all
        result = client.enroll(new_key(), name("imported-device"), challenge=CHALLENGE, ca=cas)
        assert result.status is PkiStatus.SUCCESS, result.fail_info_text
        assert verify_chain(imported, pem(result.certificate)).returncode == 0
    finally:
        server.stop()


def _ra_files(work: Path, key, cn: str, issuer: str = "issuing") -> tuple[Path, Path]:
    from cryptography.hazmat.primitives.serialization import (
        NoEncryption,
        PrivateFormat,
        load_pem_private_key,
    )

    ca_key = load_pem_private_key((work / f"{issuer}.key").read_bytes(), None)
    ca = load(work / f"{issuer}.pem")
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = work / f"{cn}.pem", work / f"{cn}.key"
    cert_path.write_bytes(pem(cert))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_path, key_path


def test_ra_import_and_renew_under_an_imported_ca(imported):
    d = imported / "scepd"
    ec_cert, ec_key = _ra_files(imported, ec.generate_private_key(ec.SECP256R1()), "ec-ra")
    refused = run_scepd("ra", "import", str(ec_cert), str(ec_key), "--dir", str(d))
    assert refused.returncode != 0 and "error: not_rsa:" in refused.stderr, refused.stderr
    foreign_cert, foreign_key = _ra_files(imported, new_key(), "foreign-ra", issuer="root")
    refused = run_scepd("ra", "import", str(foreign_cert), str(foreign_key), "--dir", str(d))
    assert refused.returncode != 0 and "error: not_our_issuer:" in refused.stderr, refused.stderr
    ra_cert, ra_key = _ra_files(imported, new_key(), "imported-ra")
    other_cert, _ = _ra_files(imported, new_key(), "other-ra")
    refused = run_scepd("ra", "import", str(other_cert), str(ra_key), "--dir", str(d))
    assert refused.returncode != 0 and "error: key_mismatch:" in refused.stderr, refused.stderr

    server = RunningServer(d)
    try:
        client = ScepClient(server.url)
        done = run_scepd("ra", "import", str(ra_cert), str(ra_key), "--dir", str(d))
        assert done.returncode == 0, done.stderr
        cas = wait_until(lambda: (c := client.get_ca_certs()).ra == load(ra_cert) and c)
        result = client.enroll(new_key(), name("via-imported-ra"), challenge=CHALLENGE, ca=cas)
        assert result.status is PkiStatus.SUCCESS, result.fail_info_text
        renewed = run_scepd("ra", "renew", "--dir", str(d))
        assert renewed.returncode == 0, renewed.stderr
        fresh = wait_until(lambda: (c := client.get_ca_certs()).ra != load(ra_cert) and c)
        fresh.ra.verify_directly_issued_by(load(imported / "issuing.pem"))
    finally:
        server.stop()


def test_rollover_of_a_subordinate_ca(imported):
    d = imported / "scepd"
    server = RunningServer(d)
    try:
        client = ScepClient(server.url)
        rolled = run_scepd("ca", "rollover", "--dir", str(d))
        assert rolled.returncode == 0, rolled.stderr
        assert rolled.stdout.strip() == str(d / "ca-next.csr")
        assert not list(d.glob("ca-2*.pem")), "a subordinate's rollover makes no root of its own"
        early = run_scepd("ca", "activate-next", "--dir", str(d))
        assert early.returncode != 0 and "scepd ca install --next" in early.stderr
        assert "GETNEXTCACERT" not in client.get_ca_caps()

        sign_csr(imported, "scepd/ca-next.csr", "next.pem")
        done = run_scepd("ca", "install", "--next", str(imported / "next.pem"), "--chain", str(imported / "root.pem"),
                         "--dir", str(d))
        assert done.returncode == 0, done.stderr
        wait_until(lambda: "GETNEXTCACERT" in client.get_ca_caps())
        old = client.get_ca_certs()
        response = httpx.get(server.url, params={"operation": "GetNextCACert"})
        message = signed.parse_signed_data(response.content, old.all)
        assert message.signature_error is None and message.signer_certificate == old.ra
        offered = set(signed.parse_certs_only(message.content))
        nxt = load(imported / "next.pem")
        assert {nxt, load(imported / "root.pem")} <= offered

        activated = run_scepd("ca", "activate-next", "--dir", str(d))
        assert activated.returncode == 0, activated.stderr
        current = wait_until(lambda: (c := client.get_ca_certs()).ca == nxt and c)
        assert load(imported / "issuing.pem") in current.all  # the overlap
        result = client.enroll(new_key(), name("after-subordinate-rollover"), challenge=CHALLENGE, ca=current)
        assert result.status is PkiStatus.SUCCESS, result.fail_info_text
        assert verify_chain(imported, pem(result.certificate), untrusted="next.pem").returncode == 0
        doctor = run_scepd("doctor", "--dir", str(d))
        assert "PASS  ca.chain: CN=Imported Issuing CA -> CN=Example Root CA,O=Example" in doctor.stdout, doctor.stdout
    finally:
        server.stop()


def test_the_next_ra_of_a_rollover_says_where_the_next_cas_crl_and_certificate_are(tmp_path):
    d = tmp_path / "rolled"
    assert run_scepd("init", "--dir", str(d), "--key", "ec:p256", "--challenge", CHALLENGE).returncode == 0
    rolled = run_scepd("ca", "rollover", "--dir", str(d))
    assert rolled.returncode == 0, rolled.stderr
    config = (d / "scepd.toml").read_text()
    next_ca = load(d / re.search(r'\[ca\][^\[]*?next_certificate = "([^"]+)"', config, re.DOTALL).group(1))
    next_ra = load(d / re.search(r'\[ra\][^\[]*?next_certificate = "([^"]+)"', config, re.DOTALL).group(1))
    next_ra.verify_directly_issued_by(next_ca)
    key_id = next_ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    cdp = next_ra.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value.endswith(f"/crl/{key_id}.crl")
    aia = next_ra.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS] \
        == [cdp[0].full_name[0].value.replace(f"/crl/{key_id}.crl", f"/ca/{key_id}.crt")]
