"""`scepd intune check` and doctor's Intune checks against the Intune emulator: both tokens,
both endpoints and the tokens' roles; each failure names its fix; nothing is changed. And the
certificates Intune asks for: the profile's subject and SANs, the strong-mapping SID URI
among them, carried into the certificate."""

from __future__ import annotations

import json

import pytest
from conftest import RunningServer, openssl_verify, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from intune_emulator import GRAPH_SCOPE, INTUNE_SCOPE, IntuneEmulator
from test_intune import SECRET, intune_instance

from scepd.client import ScepClient
from scepd.protocol import PkiStatus
from scepd.registry.config import update_config_file
from scepd.registry.instance import create_instance
from scepd.store import Store

ENV = {"SCEPD_INTUNE_CLIENT_SECRET": SECRET}


@pytest.fixture
def emulator(tmp_path):
    emulator = IntuneEmulator(tmp_path / "emulator", client_secret=SECRET)
    emulator.codes = {"intune-good": "Success"}
    yield emulator
    emulator.close()


def check(directory, *extra, env=ENV):
    return run_scepd("intune", "check", "--dir", str(directory), *extra, env=env)


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_check_gets_both_tokens_and_endpoints_and_changes_nothing(emulator, tmp_path):
    d = tmp_path / "scep"
    intune_instance(d, emulator)
    result = check(d, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["endpoints"] == {"ScepRequestValidationFEService": f"{emulator.base}/scep-validation/a",
                                   "PkiConnectorFEService": f"{emulator.base}/pki-connector"}
    assert report["roles"] == {GRAPH_SCOPE: ["Application.Read.All"], INTUNE_SCOPE: ["scep_challenge_provider"]}
    assert {c["status"] for c in report["checks"]} == {"PASS"}
    assert set(by_name(report)) == {"intune.token.graph", "intune.discovery", "intune.token.intune"}
    # Entra and Graph only: nothing validated, notified or revoked, nothing stored.
    assert emulator.kinds() == ["token", "discovery", "token"]
    assert emulator.errors == []
    assert Store(f"sqlite:///{d / 'scepd.db'}").certificate_count() == 0
    assert SECRET not in result.stdout + result.stderr

    text = check(d)
    assert text.returncode == 0
    assert "scep_challenge_provider" in text.stdout and f"{emulator.base}/pki-connector" in text.stdout


def test_a_wrong_secret_names_the_new_secret_as_the_fix(emulator, tmp_path):
    d = tmp_path / "scep"
    intune_instance(d, emulator)
    result = check(d, "--json", env={"SCEPD_INTUNE_CLIENT_SECRET": "not-the-secret"})
    assert result.returncode == 2
    checks = by_name(json.loads(result.stdout))
    assert checks["intune.token.graph"]["status"] == "FAIL"
    assert "client secret is wrong (AADSTS7000215)" in checks["intune.token.graph"]["reason"]
    assert "Certificates & secrets" in checks["intune.token.graph"]["fix"]
    assert "intune.discovery" not in checks  # not asked without a token
    assert "not-the-secret" not in result.stdout + result.stderr


@pytest.mark.parametrize(("scope", "role", "failing"), [
    (GRAPH_SCOPE, "Application.Read.All", "intune.token.graph"),
    (INTUNE_SCOPE, "scep_challenge_provider", "intune.token.intune"),
])
def test_missing_admin_consent_names_the_permission(emulator, tmp_path, scope, role, failing):
    emulator.roles[scope] = []  # added to the app registration, never consented to
    d = tmp_path / "scep"
    intune_instance(d, emulator)
    result = check(d, "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    failed = [c for c in report["checks"] if c["status"] == "FAIL"]
    assert [c["name"] for c in failed] == [failing]
    assert role in failed[0]["reason"] and role in failed[0]["fix"] and "Grant admin consent" in failed[0]["fix"]
    assert report["roles"][scope] == []


def test_graph_refusing_the_endpoint_list_names_application_read_all(emulator, tmp_path, monkeypatch):
    from scepd.intune import probe as probe_module
    from scepd.registry.instance import Instance
    from scepd.wiring import intune_check

    emulator.roles[GRAPH_SCOPE] = []
    # A token that is not a JWT hides its roles: Graph's 403 is then what names the permission.
    monkeypatch.setattr(probe_module, "token_roles", lambda token: None)
    d = tmp_path / "scep"
    intune_instance(d, emulator)
    _found, results = intune_check(Instance.open(d, ENV))
    discovery = next(r for r in results if r.name == "intune.discovery")
    assert discovery.status == "FAIL" and "Application.Read.All" in discovery.fix
    assert "Authorization_RequestDenied" in discovery.reason
    assert emulator.kinds()[:2] == ["token", "forbidden"]


def test_doctor_runs_the_intune_checks_in_intune_mode(emulator, tmp_path):
    d = tmp_path / "scep"
    intune_instance(d, emulator)
    good = run_scepd("doctor", "--dir", str(d), "--json", env=ENV)
    names = {c["name"]: c["status"] for c in json.loads(good.stdout)}
    assert names["intune.token.graph"] == names["intune.discovery"] == names["intune.token.intune"] == "PASS"
    emulator.roles[INTUNE_SCOPE] = []
    bad = run_scepd("doctor", "--dir", str(d), env=ENV)
    assert bad.returncode == 2
    assert "FAIL  intune.token.intune" in bad.stdout and "scep_challenge_provider" in bad.stdout


def test_check_outside_intune_mode_says_how_to_turn_it_on(tmp_path):
    d = tmp_path / "plain"
    create_instance(d, key_spec="ec:p256")
    result = check(d)
    assert result.returncode == 2 and 'not "intune"' in result.stderr
    doctor = run_scepd("doctor", "--dir", str(d), "--json")
    assert not [c for c in json.loads(doctor.stdout) if c["name"].startswith("intune.")]


def test_missing_settings_are_named_before_anything_is_asked(emulator, tmp_path):
    d = tmp_path / "scep"
    intune_instance(d, emulator)
    update_config_file(d / "scepd.toml", {"intune": {"client_id": ""}})
    result = check(d, "--json")
    assert result.returncode == 2
    [only] = json.loads(result.stdout)["checks"]
    assert only["name"] == "intune.settings" and "client_id" in only["reason"]
    assert emulator.events == []


def test_the_intune_profiles_subject_and_sans_reach_the_certificate(emulator, tmp_path):
    """Intune's SCEP profile puts the device's identity in the CSR (subject from {{AAD_Device_ID}}
    and the like, SANs including the strong-mapping SID URI of KB5014754); the certificate
    must carry all of it, as the domain controllers' strong mapping reads the URI."""
    d = tmp_path / "scep"
    intune_instance(d, emulator)
    server = RunningServer(d, env=ENV)
    sid = "S-1-5-21-1004336348-1177238915-682003330-1105"
    sans = [
        x509.UniformResourceIdentifier(f"tag:microsoft.com,2022-09-14:sid:{sid}"),
        x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"),  # UPN, as Intune's {{UserPrincipalName}}
                       b"\x0c\x15alice@contoso.example"),
        x509.RFC822Name("alice@contoso.example"),
        x509.DNSName("dev-4711.contoso.example"),
    ]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "4f9b1c2e-device-id"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso")])
    try:
        result = ScepClient(server.url).enroll(rsa.generate_private_key(65537, 2048), subject, sans=sans,
                                               challenge="intune-good")
    finally:
        server.stop()
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    cert = result.certificate
    assert cert.subject == subject
    issued = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(issued) == sans
    assert openssl_verify(d / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), tmp_path).returncode == 0
    assert emulator.errors == []


def test_a_template_held_for_approval_stops_an_intune_server(emulator, tmp_path):
    """Intune must be told of each certificate before delivery, with the request it validated;
    a request approved by hand later cannot be: such a template is refused at start."""
    d = tmp_path / "scep"
    intune_instance(d, emulator)
    update_config_file(d / "scepd.toml", {"templates": {"Manual": {"approval": "manual"}}})
    doctor = run_scepd("doctor", "--dir", str(d), "--json", env=ENV)
    [finding] = [c for c in json.loads(doctor.stdout) if c["name"] == "intune.templates"]
    assert finding["status"] == "FAIL" and "Manual" in finding["reason"] and 'approval = "auto"' in finding["fix"]
    serve = run_scepd("serve", "--dir", str(d), "--port", "1", env=ENV, timeout=60)
    assert serve.returncode != 0 and "intune.templates" in serve.stderr
