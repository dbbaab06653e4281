"""Interop with a real third-party client: strongSwan's `pki --scepca` / `pki --scep` (Debian).

strongSwan 5.9.8 (Debian 12) never picks AES from GetCACaps, so these runs use --cipher des3;
see docs/clients.md.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import CHALLENGE, require_tool


def pki(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["pki", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fetched(server, tmp_path_factory):
    require_tool("pki")
    work = tmp_path_factory.mktemp("strongswan")
    result = pki("--scepca", "--url", server.url, "--caout", "ca.pem", "--raout", "ra.pem", "--outform", "pem", cwd=work)
    assert result.returncode == 0, result.stderr
    return work


def test_scepca_fetches_the_ca_and_ra(fetched, instance_dir):
    assert (fetched / "ca.pem").read_bytes().strip() == (instance_dir / "ca.pem").read_bytes().strip()
    assert (fetched / "ra.pem").read_bytes().strip() == (instance_dir / "ra.pem").read_bytes().strip()


@pytest.mark.parametrize("digest", ["sha256", "sha1", "sha512"])
def test_strongswan_enrolls_and_openssl_verifies(server, fetched, ca_pem, digest):
    """With a subjectAltName, strongSwan sends its CSR attributes out of DER order."""
    work = fetched
    key = f"rsa-{digest}.key"
    gen = pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "pem", cwd=work)
    assert gen.returncode == 0, gen.stderr
    (work / key).write_text(gen.stdout)
    cert = work / f"rsa-{digest}-cert.pem"
    enroll = subprocess.run(
        ["pki", "--scep", "--url", server.url, "--in", key, "--dn", f"CN=strongswan-{digest}",
         "--san", f"{digest}.strongswan.example", "--digest", digest, "--password", CHALLENGE, "--cacert-enc", "ra.pem",
         "--cacert-sig", "ca.pem", "--cipher", "des3", "--outform", "pem"],
        cwd=work, capture_output=True, timeout=120,
    )
    assert enroll.returncode == 0, enroll.stderr.decode()
    cert.write_bytes(enroll.stdout)
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca_pem), str(cert)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"], capture_output=True, text=True).stdout
    assert f"DNS:{digest}.strongswan.example" in text


def test_strongswan_with_a_wrong_password_is_refused_and_logged(server, fetched):
    gen = pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "pem", cwd=fetched)
    (fetched / "wrong.key").write_text(gen.stdout)
    enroll = subprocess.run(
        ["pki", "--scep", "--url", server.url, "--in", "wrong.key", "--dn", "CN=strongswan-wrong",
         "--password", "wrong", "--cacert-enc", "ra.pem", "--cacert-sig", "ca.pem", "--cipher", "des3"],
        cwd=fetched, capture_output=True, timeout=120,
    )
    assert enroll.returncode != 0
    assert b"badRequest" in enroll.stderr  # strongSwan does not print the failInfoText
    logged = [line for line in server.log_lines() if "CN=strongswan-wrong" in line]
    assert logged and '"code": "ChallengePasswordIncorrect"' in logged[-1]
