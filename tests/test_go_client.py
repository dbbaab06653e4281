"""A real Go client: Debian's `scepclient` (micromdm/scep 2.1.0), whose CMS is
go.mozilla.org/pkcs7, the library most Go SCEP clients and MDM agents use (issue 10, items 1
and 2). It writes the envelope's encryptedContent constructed with a definite length, encrypts
with single DES, and derives the transactionID from the public key, so that its renewal with
the same key repeats the enrollment's transactionID.

scepclient keeps its request in csr.pem of the directory it runs in and reuses it, so each
device here runs in a directory of its own. It takes RSA keys only (as strongSwan's pki does):
EC device keys are renewed in test_renewal_rules.py and test_cms_interop.py with the project's
client.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import CHALLENGE, RunningServer, require_tool, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scepd.registry.instance import create_instance


@pytest.fixture(scope="module")
def go_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("go-client")
    create_instance(d, ca_subject="CN=Go Client CA,O=scepd tests", key_spec="rsa:2048", static_challenge=CHALLENGE)
    return d


@pytest.fixture(scope="module")
def srv(go_dir):
    server = RunningServer(go_dir)
    yield server
    server.stop()


def scepclient(server: RunningServer, device: Path, *args: str) -> subprocess.CompletedProcess:
    """scepclient run for the device whose key, certificate and request live in `device`."""
    device.mkdir(exist_ok=True)
    return subprocess.run(
        [require_tool("scepclient"), "-server-url", server.url, "-private-key", "dev.key", "-certificate", "dev.crt",
         *args],
        cwd=device, capture_output=True, text=True, timeout=60)


def certificate(device: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((device / "dev.crt").read_bytes())


def request_lines(server: RunningServer, serial_or_code: str) -> list[dict]:
    """The server's request log lines that name `serial_or_code` (a serial or an error code)."""
    found = []
    for line in server.log_lines():
        record = json.loads(line)
        if record.get("operation") == "PKIOperation" and serial_or_code in (record.get("serial"), record.get("code")):
            found.append(record)
    return found


def enrolled(server: RunningServer, device: Path, cn: str) -> x509.Certificate:
    done = scepclient(server, device, "-challenge", CHALLENGE, "-cn", cn)
    assert done.returncode == 0, done.stderr
    return certificate(device)


def test_the_go_client_enrolls_with_single_des_and_its_certificate_verifies(srv, go_dir, tmp_path):
    cert = enrolled(srv, tmp_path / "device", "go-device")
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(go_dir / "ca.pem"), str(tmp_path / "device" / "dev.crt")],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "go-device"
    [line] = request_lines(srv, format(cert.serial_number, "x"))
    assert (line["message_type"], line["status"], line["cipher"]) == ("PKCS_REQ", "SUCCESS", "des")
    # Accepted, but named as weak with the client and the transaction, for the administrator.
    assert [text for text in srv.log_lines() if "weak cipher" in text and line["transaction_id"] in text]


def test_the_go_client_renews_with_the_same_key_and_gets_a_new_certificate(srv, go_dir, tmp_path):
    device = tmp_path / "device"
    old = enrolled(srv, device, "go-renewer")
    renewed = scepclient(srv, device, "-cn", "go-renewer")  # no challenge: signed by its certificate
    assert renewed.returncode == 0, renewed.stderr
    new = certificate(device)
    assert new.serial_number != old.serial_number
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert new.public_key().public_bytes(serialization.Encoding.DER, public) == old.public_key().public_bytes(
        serialization.Encoding.DER, public)
    [first] = request_lines(srv, format(old.serial_number, "x"))
    [second] = request_lines(srv, format(new.serial_number, "x"))
    assert second["message_type"] == "RENEWAL_REQ" and second["transaction_id"] == first["transaction_id"]
    shown = run_scepd("certs", "show", format(new.serial_number, "x"), "--dir", str(go_dir))
    assert json.loads(shown.stdout)["renewal_of"] == format(old.serial_number, "x")


def test_a_go_client_whose_certificate_was_revoked_cannot_renew_it(srv, go_dir, tmp_path):
    device = tmp_path / "device"
    old = enrolled(srv, device, "go-compromised")
    serial = format(old.serial_number, "x")
    assert run_scepd("certs", "revoke", serial, "--reason", "keyCompromise", "--dir", str(go_dir)).returncode == 0
    refused = scepclient(srv, device, "-cn", "go-compromised")
    assert refused.returncode != 0 and "badCertID" in refused.stdout + refused.stderr
    assert certificate(device).serial_number == old.serial_number  # nothing new was handed out
    assert request_lines(srv, "SignerCertificateRevoked")


def test_a_go_client_with_a_wrong_challenge_gets_no_certificate(srv, tmp_path):
    device = tmp_path / "device"
    refused = scepclient(srv, device, "-challenge", "not-the-challenge", "-cn", "go-guesser")
    assert refused.returncode != 0 and "badRequest" in refused.stdout + refused.stderr
    assert not (device / "dev.crt").exists()


def test_a_go_client_is_refused_by_name_where_single_des_is_not_allowed(tmp_path):
    d = tmp_path / "no-des"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    strict = RunningServer(d, env={"SCEPD_SCEP_ALLOW_DES": "false"})
    try:
        refused = scepclient(strict, tmp_path / "device", "-challenge", CHALLENGE, "-cn", "go-des")
        assert refused.returncode != 0 and "badAlg" in refused.stdout + refused.stderr
        assert request_lines(strict, "AlgorithmRefused")
    finally:
        strict.stop()
