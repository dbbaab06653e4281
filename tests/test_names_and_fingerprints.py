"""One writer and one reader of SANs (scepd.protocol.names), one module of fingerprints
(scepd.protocol.fingerprints): the forms agree with each other and with the tools that read
them (openssl, joserfc), and the challenge API holds MDM SANs to the same grammar."""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess

import httpx
import pytest
from asn1crypto import core
from conftest import CHALLENGE, RunningServer, name, require_tool, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc.util import urlsafe_b64encode

from scepd.challenge.mdm import ExpectedRequest, compare
from scepd.client import ScepClient, build_csr
from scepd.client.client import self_signed
from scepd.protocol import PkiStatus
from scepd.protocol.csr import parse_csr
from scepd.protocol.fingerprints import (
    certificate_sha1,
    certificate_sha256,
    certificate_sha256_display,
    certificate_thumbprint,
    jose_thumbprint,
    public_key_sha256,
)
from scepd.protocol.names import UPN_OID, canonical_san, parse_san, san_parts, san_text
from scepd.registry.instance import create_instance


@pytest.mark.parametrize("text, general_name", [
    ("dns:device.example", x509.DNSName("device.example")),
    ("ip:192.0.2.7", x509.IPAddress(ipaddress.ip_address("192.0.2.7"))),
    ("ip:2001:db8::1", x509.IPAddress(ipaddress.ip_address("2001:db8::1"))),
    ("email:user@example.com", x509.RFC822Name("user@example.com")),
    ("uri:IntuneDeviceId://D-42", x509.UniformResourceIdentifier("IntuneDeviceId://D-42")),
    ("upn:user@corp.example", x509.OtherName(UPN_OID, core.UTF8String("user@corp.example").dump())),
])
def test_a_san_reads_and_writes_back_the_same(text, general_name):
    assert parse_san(text) == general_name
    assert san_text(general_name) == text


def test_a_san_written_otherwise_means_the_same_name():
    assert canonical_san("DNS:device.example") == "dns:device.example"
    assert canonical_san("ip:2001:0db8:0000::0001") == "ip:2001:db8::1"
    assert san_parts("Email:a@b.example") == ("email", "a@b.example")


@pytest.mark.parametrize("text", ["device.example", "dns:", "fax:+1555", "ip:not-an-address"])
def test_a_malformed_san_is_refused_by_name(text):
    with pytest.raises(ValueError):
        parse_san(text)


def test_an_mdm_challenge_cannot_expect_a_san_no_csr_can_carry():
    with pytest.raises(ValueError, match="unknown SAN type"):
        ExpectedRequest(sans=("fax:+1555",))
    with pytest.raises(ValueError):
        ExpectedRequest.from_claim({"sans": ["nonsense"]})


def test_an_mdm_challenge_compares_sans_as_names_not_as_spelling():
    key = ec.generate_private_key(ec.SECP256R1())
    csr = parse_csr(build_csr(key, name("d"), sans=[x509.DNSName("d.example"),
                                                    x509.IPAddress(ipaddress.ip_address("2001:db8::1"))]).public_bytes(Encoding.DER))
    assert compare(ExpectedRequest(sans=("DNS:d.example", "ip:2001:0db8::0001")), csr) is None
    code, _ = compare(ExpectedRequest(sans=("dns:other.example",)), csr)
    assert code.value == "SubjectAltNameMismatch"


def test_fingerprints_in_the_forms_their_readers_expect(tmp_path):
    key = rsa.generate_private_key(65537, 2048)
    cert = self_signed(key, name("fingerprinted"))
    der = cert.public_bytes(Encoding.DER)
    assert certificate_sha256(cert) == hashlib.sha256(der).hexdigest()
    assert certificate_sha1(cert) == hashlib.sha1(der).digest()  # noqa: S324 (Apple's CAFingerprint)
    assert certificate_thumbprint(cert) == hashlib.sha1(der).hexdigest().upper()  # noqa: S324
    assert jose_thumbprint(cert) == urlsafe_b64encode(hashlib.sha256(der).digest()).decode("ascii")
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert public_key_sha256(key.public_key()) == hashlib.sha256(spki).hexdigest()
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    shown = subprocess.run([require_tool("openssl"), "x509", "-in", str(path), "-noout", "-fingerprint", "-sha256"],
                           capture_output=True, text=True, check=True).stdout
    assert shown.strip().split("=", 1)[1] == certificate_sha256_display(cert)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    d = tmp_path_factory.mktemp("names-api")
    create_instance(d, ca_subject="CN=Names CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    token = run_scepd("registry", "token", "new", "--dir", str(d), check=True).stdout.strip()
    server = RunningServer(d)
    yield server, {"Authorization": f"Bearer {token}"}
    server.stop()


def test_the_challenge_api_refuses_a_san_no_device_could_carry(api):
    server, auth = api
    url = f"http://127.0.0.1:{server.port}/api/v1/challenges"
    response = httpx.post(url, json={"subject": "CN=api-san", "sans": ["fax:+1555"]}, headers=auth)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "RequestMalformed" and "fax" in response.json()["errorDescription"]


def test_a_challenge_api_san_in_capitals_matches_the_device_name(api):
    server, auth = api
    url = f"http://127.0.0.1:{server.port}/api/v1/challenges"
    response = httpx.post(url, json={"subject": "CN=api-caps", "sans": ["DNS:caps.example"]}, headers=auth)
    assert response.status_code == 201, response.text
    result = ScepClient(server.url).enroll(rsa.generate_private_key(65537, 2048), name("api-caps"),
                                           sans=[x509.DNSName("caps.example")], challenge=response.json()["challenge"])
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
