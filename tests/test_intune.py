"""[challenge] mode = "intune": scepd as Intune's third-party SCEP CA, against the Intune
emulator (tests/intune_emulator.py) over HTTPS, through HTTP with the project client."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest
from conftest import RunningServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from intune_emulator import GRAPH_SCOPE, INTUNE_SCOPE, IntuneEmulator

from scepd.client import ScepClient
from scepd.protocol import FailInfo, PkiStatus
from scepd.registry.config import ConfigError, load_config, update_config_file
from scepd.registry.instance import Instance, create_instance
from scepd.store import Store
from scepd.wiring import build_validators

SECRET = "emulated-entra-client-secret-4f1d"
_instances = itertools.count()


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def key():
    return rsa.generate_private_key(65537, 2048)


def intune_instance(directory, emulator: IntuneEmulator, **intune) -> None:
    create_instance(directory, ca_subject="CN=Intune SCEP CA", key_spec="rsa:2048", static_challenge="local-static")
    update_config_file(directory / "scepd.toml", {
        "challenge": {"mode": "intune", "remote_timeout": 5},
        "intune": {"tenant_id": emulator.tenant, "client_id": emulator.client_id, "authority_url": emulator.base,
                   "graph_url": emulator.base, "ca_bundle": str(emulator.ca_pem), **intune},
    })


@pytest.fixture
def emulator(tmp_path):
    emulator = IntuneEmulator(tmp_path / "emulator", client_secret=SECRET)
    emulator.codes = {"intune-good": "Success", "intune-good-2": "Success", "intune-stale": "ChallengeExpired"}
    yield emulator
    emulator.close()


def test_intune_decides_with_one_token_per_scope_for_many_enrollments(emulator, tmp_path):
    d = tmp_path / "scep"
    intune_instance(d, emulator)  # the secret comes from the environment, as the issue allows
    server = RunningServer(d, env={"SCEPD_INTUNE_CLIENT_SECRET": SECRET})
    try:
        c = ScepClient(server.url)
        issued = [c.enroll(key(), name(f"intune-{i}"), challenge="intune-good") for i in range(3)]
        for result in issued:
            assert result.status is PkiStatus.SUCCESS, result.fail_info_text
        refused = c.enroll(key(), name("intune-stale"), challenge="intune-stale")
        # In intune mode only Intune decides: the instance's own static challenge is refused.
        local = c.enroll(key(), name("intune-local"), challenge="local-static")
    finally:
        server.stop()
    assert refused.status is PkiStatus.FAILURE and refused.fail_info is FailInfo.BAD_REQUEST
    assert refused.fail_info_text.startswith("ChallengeExpired"), refused.fail_info_text
    assert local.fail_info_text.startswith("ChallengeDecodingError"), local.fail_info_text
    assert emulator.errors == []
    # One token per scope, one discovery, then only validateRequest (and successNotification
    # for each issued certificate): in this order.
    assert emulator.events[:3] == [("token", GRAPH_SCOPE, "secret"), ("discovery", "/scep-validation/a"),
                                   ("token", INTUNE_SCOPE, "secret")]
    assert [e[0] for e in emulator.events[3:]] == ["validate", "success"] * 3 + ["validate"] * 2
    validations = [e for e in emulator.events[3:] if e[0] == "validate"]
    assert [e[1] for e in validations] == [r.transaction_id for r in (*issued, refused, local)]
    assert [e[2] for e in validations] == ["Success"] * 3 + ["ChallengeExpired", "ChallengeDecodingError"]
    assert Store(f"sqlite:///{d / 'scepd.db'}").certificate_count() == 3
    # Each call's client-request-id is logged with the SCEP transaction ID; the secret never.
    log = (d / "scepd.log").read_text()
    logged = [json.loads(line) for line in log.splitlines()]
    for _, transaction_id, code, request_id in validations:
        assert any(e.get("client_request_id") == request_id and e.get("transaction_id") == transaction_id
                   and e.get("intune_code") == code for e in logged)
    assert SECRET not in log and SECRET not in server.stderr_path.read_text()


def test_discovery_follows_intune_when_it_moves_the_tenant(emulator, tmp_path):
    d = tmp_path / "scep"
    intune_instance(d, emulator, client_secret=SECRET)
    server = RunningServer(d)
    try:
        c = ScepClient(server.url)
        first = c.enroll(key(), name("before-move"), challenge="intune-good")
        emulator.move("/scep-validation/b")
        second = c.enroll(key(), name("after-move"), challenge="intune-good-2")
        third = c.enroll(key(), name("after-move-2"), challenge="intune-good")
    finally:
        server.stop()
    for result in (first, second, third):
        assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    assert emulator.errors == []
    assert emulator.kinds() == ["token", "discovery", "token", "validate", "success",
                                "moved", "stale", "discovery", "validate", "success", "validate", "success"]
    assert emulator.events[7] == ("discovery", "/scep-validation/b")


def test_a_certificate_credential_works_as_well_as_a_secret(tmp_path):
    credential_key = rsa.generate_private_key(65537, 2048)
    now = dt.datetime.now(dt.timezone.utc)
    subject = name("scepd app registration")
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(credential_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
                   .sign(credential_key, hashes.SHA256()))
    emulator = IntuneEmulator(tmp_path / "emulator", client_certificate=certificate)  # no secret at all
    emulator.codes = {"intune-good": "Success"}
    d = tmp_path / "scep"
    intune_instance(d, emulator, client_certificate="intune-app.pem", client_key="intune-app.key")
    (d / "intune-app.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (d / "intune-app.key").write_bytes(credential_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = RunningServer(d)
    try:
        c = ScepClient(server.url)
        results = [c.enroll(key(), name(f"cert-credential-{i}"), challenge="intune-good") for i in range(2)]
    finally:
        server.stop()
        emulator.close()
    for result in results:
        assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    assert emulator.errors == []
    assert [e for e in emulator.events if e[0] == "token"] == [("token", GRAPH_SCOPE, "certificate"),
                                                               ("token", INTUNE_SCOPE, "certificate")]


def test_without_intunes_verdict_nothing_is_issued(emulator, tmp_path):
    d = tmp_path / "scep"
    intune_instance(d, emulator, client_secret="not-the-secret")
    server = RunningServer(d)
    try:
        result = ScepClient(server.url).enroll(key(), name("no-token"), challenge="intune-good")
    finally:
        server.stop()
    assert result.status is PkiStatus.FAILURE and result.fail_info is FailInfo.BAD_REQUEST
    assert result.fail_info_text.startswith("RegistrationPointUnavailable"), result.fail_info_text
    assert "AADSTS7000215" in result.fail_info_text  # Entra's own reason reaches the administrator
    assert "not-the-secret" not in (d / "scepd.log").read_text()
    assert [e[0] for e in emulator.events] == []  # no token, so neither discovery nor validation
    assert Store(f"sqlite:///{d / 'scepd.db'}").certificate_count() == 0


def test_intune_mode_is_configured_in_its_own_section(tmp_path):
    d = tmp_path / "scep"
    create_instance(d, key_spec="rsa:2048")
    update_config_file(d / "scepd.toml", {"challenge": {"mode": "intune"}})
    config = load_config(d / "scepd.toml", environ={"SCEPD_INTUNE_CLIENT_SECRET": "from-env"})
    assert config.intune.client_secret == "from-env"
    assert config.intune.authority_url == "https://login.microsoftonline.com"
    assert config.intune.graph_url == "https://graph.microsoft.com"
    # Not yet usable: readiness names what is missing, so start-up checks and doctor can say it.
    ready = build_validators(Instance.open(d))
    missing = ('[challenge] mode = "intune" needs [intune] tenant_id, client_id, '
               "client_secret (or client_certificate and client_key)")
    assert ready.readiness() == ((False, missing),)
    with pytest.raises(ConfigError):
        update_config_file(d / "scepd.toml", {"intune": {"revocation_poll_interval": "soon"}})
    update_config_file(d / "scepd.toml", {"intune": {"revocation_poll_interval": "0"}})


def _validator(emulator: IntuneEmulator, **intune):
    """An IntuneValidator built as `scepd serve` builds it, in this process."""
    from scepd.wiring import build_intune_validator

    d = emulator.ca_pem.parent.parent / f"in-process-{next(_instances)}"
    intune_instance(d, emulator, client_secret=SECRET, **intune)
    return build_intune_validator(Instance.open(d))


def _request(challenge: str):
    from scepd.challenge import ChallengeRequest
    from scepd.client import build_csr
    from scepd.protocol.csr import parse_csr

    csr = build_csr(key(), name("in-process"), challenge=challenge)
    der = csr.public_bytes(serialization.Encoding.DER)
    return ChallengeRequest(transaction_id="TX-" + challenge, password=challenge, csr=parse_csr(der))


def test_only_microsofts_codes_become_scepds(emulator):
    from scepd.protocol.errors import ErrorCode

    emulator.codes = {"new-code": "SomethingIntuneAddedLater", "internal": "StoreUnavailable",
                      "untargeted": "ScepProfileNoLongerTargetedToTheClient"}
    validator = _validator(emulator)
    verdicts = {c: validator.verify(_request(c), uow=None) for c in emulator.codes}
    # An unknown answer, or one of scepd's own codes, is not taken for one of Microsoft's.
    assert verdicts["new-code"].refusal.code is ErrorCode.INTUNE_UNKNOWN
    assert "SomethingIntuneAddedLater" in verdicts["new-code"].refusal.reason
    assert verdicts["internal"].refusal.code is ErrorCode.INTUNE_UNKNOWN
    assert verdicts["untargeted"].refusal.code is ErrorCode.SCEP_PROFILE_NO_LONGER_TARGETED
    assert emulator.errors == []


def test_intune_down_is_unavailable_after_one_rediscovery(emulator):
    from scepd.protocol.errors import ErrorCode

    emulator.codes = {"intune-good": "Success"}
    emulator.validate_status = 503
    validator = _validator(emulator)
    verdict = validator.verify(_request("intune-good"), uow=None)
    assert verdict.refusal.code is ErrorCode.REGISTRATION_POINT_UNAVAILABLE
    assert "HTTP 503" in verdict.refusal.reason
    # Asked once, the list read again once, the same URI not asked a second time.
    assert emulator.kinds() == ["token", "discovery", "token", "down", "discovery"]
    emulator.validate_status = None
    assert validator.verify(_request("intune-good"), uow=None).accepted


def test_threads_share_one_token(emulator):
    import threading

    from scepd.intune.tokens import INTUNE_SCOPE as scope

    validator = _validator(emulator)
    tokens, barrier = [], threading.Barrier(8)

    def fetch():
        barrier.wait()
        tokens.append(validator.intune.tokens.get(scope))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(tokens)) == 1 and len(tokens) == 8
    assert emulator.kinds() == ["token"]
    # A rebuilt validator (scepd.toml changed) finds the same token in the process's cache.
    assert _validator(emulator).intune.tokens.get(scope) == tokens[0]
    assert emulator.kinds() == ["token"]


def test_an_unusable_credential_or_bundle_is_named_at_start_up(emulator, tmp_path):
    validator = _validator(emulator, client_certificate=str(emulator.ca_pem.parent / "emulator.pem"),
                           client_key=str(emulator.ca_pem.parent / "emulator.key"))  # an EC key: Entra wants RSA
    (ok, reason), = validator.readiness()
    assert not ok and "cannot sign an assertion" in reason and "RSA" in reason
    validator = _validator(emulator, ca_bundle=str(tmp_path / "missing.pem"))
    (ok, reason), = validator.readiness()
    assert not ok and "ca_bundle" in reason
    # Asked all the same, it refuses by name rather than failing inside.
    from scepd.protocol.errors import ErrorCode

    verdict = validator.verify(_request("intune-good"), uow=None)
    assert verdict.refusal.code is ErrorCode.REGISTRATION_POINT_UNAVAILABLE and "ca_bundle" in verdict.refusal.reason


def _log_lines(directory) -> list[dict]:
    return [json.loads(line) for line in (directory / "scepd.log").read_text().splitlines()]


def test_intune_is_told_of_the_certificate_before_the_client_gets_it(emulator, tmp_path):
    import time

    from scepd.protocol.fingerprints import certificate_thumbprint

    d = tmp_path / "scep"
    intune_instance(d, emulator, client_secret=SECRET)
    server = RunningServer(d)
    try:
        result = ScepClient(server.url).enroll(key(), name("notified-first"), challenge="intune-good")
        received = time.monotonic()
    finally:
        server.stop()
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    assert emulator.errors == []  # every header and field of successNotification was as Microsoft's
    (success,) = [e for e in emulator.events if e[0] == "success"]
    assert success[1] == result.transaction_id
    assert success[2] == certificate_thumbprint(result.certificate)
    assert success[3] == format(result.certificate.serial_number, "x")
    assert success[4] < received
    # In the server's own log too: Intune answered before the request's line was written.
    lines = _log_lines(d)
    told = next(i for i, e in enumerate(lines) if e.get("client_request_id") == success[5])
    answered = next(i for i, e in enumerate(lines) if e.get("transaction_id") == result.transaction_id
                    and e.get("status") == "SUCCESS")
    assert told < answered
    assert "failure" not in emulator.kinds()


def test_a_failed_success_notification_withholds_and_revokes_the_certificate(emulator, tmp_path):
    import httpx

    d = tmp_path / "scep"
    intune_instance(d, emulator, client_secret=SECRET)
    emulator.success_status = 500
    server = RunningServer(d)
    try:
        c = ScepClient(server.url)
        result = c.enroll(key(), name("not-told"), challenge="intune-good")
        ca = c.get_ca_certs().ca
        key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
        crl = x509.load_der_x509_crl(httpx.get(f"{server.url.split('/scep')[0]}/crl/{key_id}.crl").content)
    finally:
        server.stop()
    assert result.status is PkiStatus.FAILURE and result.certificate is None
    assert result.fail_info_text.startswith("IntuneNotificationFailed"), result.fail_info_text
    assert "HTTP 500" in result.fail_info_text
    assert emulator.errors == []
    # Asked once, the service looked up again (the same URI: not asked twice); no failure
    # notification about Intune's own failing call.
    assert emulator.kinds() == ["token", "discovery", "token", "validate", "success-down", "discovery"]
    store = Store(f"sqlite:///{d / 'scepd.db'}")
    (record,) = store.find_requests(result.transaction_id)
    certificate = store.find_certificate(record.certificate_serial)
    assert certificate.status == "revoked" and certificate.revocation_reason == "cessationOfOperation"
    assert crl.get_revoked_certificate_by_serial_number(int(certificate.serial, 16)) is not None
    assert crl.is_signature_valid(ca.public_key())
    assert any("withheld and revoked" in e.get("msg", "") and e.get("serial") == certificate.serial
               for e in _log_lines(d))


def test_intunes_refusal_is_not_answered_with_a_failure_notification(emulator, tmp_path):
    d = tmp_path / "scep"
    intune_instance(d, emulator, client_secret=SECRET)
    server = RunningServer(d)
    try:
        refused = ScepClient(server.url).enroll(key(), name("expired"), challenge="intune-stale")
        emulator.validate_status = 503
        unreachable = ScepClient(server.url).enroll(key(), name("down"), challenge="intune-good")
    finally:
        server.stop()
    assert refused.fail_info_text.startswith("ChallengeExpired"), refused.fail_info_text
    assert unreachable.fail_info_text.startswith("RegistrationPointUnavailable"), unreachable.fail_info_text
    assert emulator.errors == []
    assert "failure" not in emulator.kinds() and "success" not in emulator.kinds()


def test_a_template_refusal_after_intunes_success_is_notified_once(emulator, tmp_path):
    d = tmp_path / "scep"
    intune_instance(d, emulator, client_secret=SECRET)
    update_config_file(d / "scepd.toml", {"templates": {"IPSECIntermediateOffline": {"min_rsa_bits": 3072}}})
    server = RunningServer(d)
    try:
        result = ScepClient(server.url).enroll(key(), name("weak-key"), challenge="intune-good")  # RSA-2048
    finally:
        server.stop()
    assert result.status is PkiStatus.FAILURE and result.fail_info_text.startswith("KeyTooWeak"), result.fail_info_text
    assert emulator.errors == []
    failures = [e for e in emulator.events if e[0] == "failure"]
    assert len(failures) == 1
    _, transaction_id, hresult, description, _ = failures[0]
    assert transaction_id == result.transaction_id
    assert hresult == -2146875375  # CERTSRV_E_KEY_LENGTH (0x80094811), not E_INVALIDARG
    assert description.startswith("KeyTooWeak: RSA-2048") and len(description) <= 255
    assert "success" not in emulator.kinds()
    assert Store(f"sqlite:///{d / 'scepd.db'}").certificate_count() == 0


def test_intunes_revocation_requests_are_carried_out_within_one_poll(emulator, tmp_path):
    import subprocess
    import time

    import httpx
    from conftest import require_tool

    require_tool("openssl")
    d = tmp_path / "scep"
    intune_instance(d, emulator, client_secret=SECRET, revocation_poll_interval="1s")
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    issuer = ca.subject.rfc4514_string()
    server = RunningServer(d)
    try:
        enrolled = ScepClient(server.url).enroll(key(), name("wiped-device"), challenge="intune-good")
        assert enrolled.status is PkiStatus.SUCCESS, enrolled.fail_info_text
        serial = format(enrolled.certificate.serial_number, "x")
        wiped = emulator.queue_revocation(serial.upper(), issuer)  # Intune's spelling of a serial may differ
        unknown = emulator.queue_revocation("7e57ab1e", issuer)
        deadline = time.monotonic() + 20
        while len(emulator.revocation_results) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
        served = httpx.get(f"http://127.0.0.1:{server.port}/crl/{key_id}.crl")
    finally:
        server.stop()
    assert emulator.errors == []
    results = {r["requestContext"]: r for r in emulator.revocation_results}
    assert results[wiped] == {"requestContext": wiped, "succeeded": True, "errorCode": "None", "errorMessage": ""}
    assert results[unknown]["succeeded"] is False and results[unknown]["errorCode"] == "CertificateNotFoundError"
    assert emulator.revocation_requests == []  # each reported once
    record = Store(f"sqlite:///{d / 'scepd.db'}").find_certificate(serial)
    assert record.status.value == "revoked" and record.revocation_reason == "cessationOfOperation"
    assert served.status_code == 200
    crl = x509.load_der_x509_crl(served.content)
    assert crl.get_revoked_certificate_by_serial_number(enrolled.certificate.serial_number) is not None
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "wiped.pem").write_bytes(enrolled.certificate.public_bytes(serialization.Encoding.PEM))
    verified = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(d / "ca.pem"),
                               "-CRLfile", str(tmp_path / "crl.pem"), str(tmp_path / "wiped.pem")],
                              check=False, capture_output=True, text=True)
    assert verified.returncode != 0 and "revoked" in (verified.stdout + verified.stderr)


def test_one_server_of_those_sharing_a_database_holds_the_revocation_lease(tmp_path):
    import datetime as dt

    store = Store(f"sqlite:///{tmp_path / 'shared.db'}")
    store.upgrade()
    minute = dt.timedelta(minutes=1)
    assert store.take_lease("intune-revocation", "server-a", minute)
    assert not store.take_lease("intune-revocation", "server-b", minute)
    assert store.take_lease("intune-revocation", "server-a", minute)  # renewed by its holder
    assert store.take_lease("intune-revocation", "server-a", -minute)  # server-a stopped: its lease lapsed
    assert store.take_lease("intune-revocation", "server-b", minute)
    assert not store.take_lease("intune-revocation", "server-a", minute)
    assert store.take_lease("other-task", "server-b", minute)
