"""The registration point as a service: its HTTP APIs, remote mode between two processes,
notifications to webhooks (signed, retried) and an MDM's allow/deny webhook."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import CHALLENGE, RunningServer, free_port, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from scepd.client import ScepClient, build_csr
from scepd.protocol import FailInfo, PkiStatus
from scepd.registry.config import update_config_file
from scepd.registry.instance import create_instance
from scepd.store import Store


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Receiver:
    """A webhook endpoint on loopback that records what it gets and answers as told."""

    def __init__(self, statuses=(200,), answer: dict | None = None) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses)
        self.answer = answer or {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                payload = json.dumps(receiver.answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.requests if predicate(json.loads(r[1]))]
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"nothing matching arrived; got {[json.loads(b) for _, b in self.requests]}")

    def close(self):
        self.server.shutdown()


def _token(directory) -> str:
    result = run_scepd("registry", "token", "new", "--dir", str(directory))
    assert result.returncode == 0
    return result.stdout.strip()


@pytest.fixture(scope="module")
def rp(tmp_path_factory):
    """A registration point (with an API token) whose server is up."""
    d = tmp_path_factory.mktemp("rp-service")
    create_instance(d, ca_subject="CN=RP service CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    token = _token(d)
    server = RunningServer(d)
    yield d, server, token
    server.stop()


def test_challenge_api_needs_a_valid_bearer_token(rp):
    d, server, token = rp
    url = f"http://127.0.0.1:{server.port}/api/v1/challenges"
    assert httpx.post(url, json={"subject": "CN=x"}).status_code == 401
    assert httpx.post(url, json={"subject": "CN=x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = httpx.post(url, json={"subject": "CN=api-device", "sans": ["dns:api.example"], "validity": "10m"},
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["scep_url"].endswith("/scep") and body["jti"]
    result = ScepClient(server.url).enroll(rsa.generate_private_key(65537, 2048), name("api-device"),
                                           sans=[x509.DNSName("api.example")], challenge=body["challenge"])
    assert result.status is PkiStatus.SUCCESS, result.fail_info_text
    bad = httpx.post(url, json={"subject": "not a DN", "colour": "blue"}, headers={"Authorization": f"Bearer {token}"})
    assert bad.status_code == 400 and "colour" in bad.json()["errorDescription"]


def test_validate_request_speaks_intunes_shape(rp):
    d, server, token = rp
    url = f"http://127.0.0.1:{server.port}/ScepActions/validateRequest"
    challenge = run_scepd("challenge", "issue", "--dir", str(d), "--subject", "CN=validated").stdout.strip()
    key = rsa.generate_private_key(65537, 2048)

    def ask(password, transaction="T-1"):
        csr = build_csr(key, name("validated"), challenge=password).public_bytes(serialization.Encoding.DER)
        body = {"request": {"transactionId": transaction, "certificateRequest": base64.b64encode(csr).decode(), "callerInfo": "test"}}
        return httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}).json()

    assert ask(challenge) == {"code": "Success", "errorDescription": ""}
    assert ask(challenge, "T-2")["code"] == "ChallengeReplayed"
    assert ask(None)["code"] == "ChallengePasswordMissing"
    assert httpx.post(url, json={"request": {}}, headers={"Authorization": f"Bearer {token}"}).status_code == 400


def test_remote_mode_asks_the_registration_point_and_tells_it_the_outcome(rp, tmp_path):
    rp_dir, rp_server, token = rp
    hook = Receiver()
    scep_dir = tmp_path / "scep-only"
    create_instance(scep_dir, ca_subject="CN=Remote SCEP CA", key_spec="rsa:2048", static_challenge="scep-local-only")
    update_config_file(scep_dir / "scepd.toml", {
        "challenge": {"mode": "remote", "remote_url": f"http://127.0.0.1:{rp_server.port}/ScepActions", "remote_token": token},
        "notifications": {"webhooks": [hook.url], "hmac_secret": "s3cret"},
    })
    scep = RunningServer(scep_dir)
    try:
        c = ScepClient(scep.url)
        challenge = run_scepd("challenge", "issue", "--dir", str(rp_dir), "--subject", "CN=remote-device").stdout.strip()
        ok = c.enroll(rsa.generate_private_key(65537, 2048), name("remote-device"), challenge=challenge)
        assert ok.status is PkiStatus.SUCCESS, ok.fail_info_text
        # In remote mode only the registration point decides: the SCEP server's own static
        # challenge means nothing, the registration point's does.
        local = c.enroll(rsa.generate_private_key(65537, 2048), name("remote-static"), challenge="scep-local-only")
        assert local.fail_info_text.startswith("ChallengePasswordIncorrect")
        rps = c.enroll(rsa.generate_private_key(65537, 2048), name("remote-static"), challenge=CHALLENGE)
        assert rps.status is PkiStatus.SUCCESS
        replay = c.enroll(rsa.generate_private_key(65537, 2048), name("remote-device"), challenge=challenge)
        assert replay.fail_info_text.startswith("ChallengeReplayed")

        # Webhooks hear of both, signed; the registration point hears of both, in its own store.
        success = hook.wait_for(lambda b: b["event"] == "success")[0]
        headers, body = success
        assert headers["X-Scepd-Signature"] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        note = json.loads(body)["notification"]
        assert note["certificateSerialNumber"] == format(ok.certificate.serial_number, "x")
        assert note["certificateThumbprint"] == ok.certificate.fingerprint(hashes.SHA1()).hex().upper()
        failure = hook.wait_for(lambda b: b["event"] == "failure" and b["notification"]["errorCode"] == "ChallengeReplayed")
        assert failure
        rp_store = Store(f"sqlite:///{rp_dir / 'scepd.db'}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            kinds = {n["kind"] for n in rp_store.notifications()}
            if {"received-success", "received-failure"} <= kinds:
                break
            time.sleep(0.3)
        assert {"received-success", "received-failure"} <= kinds
        # Neither the webhooks nor the registration point's store ever see a challenge.
        told = [json.loads(b)["notification"] for _, b in hook.wait_for(lambda b: b["event"] == "success")]
        kept = [n["payload"] for n in rp_store.notifications() if n["kind"] == "received-success"]
        for payload in told + kept:
            request = base64.b64decode(payload["certificateRequest"])
            assert challenge.encode() not in request and CHALLENGE.encode() not in request
            assert x509.load_der_x509_csr(request).subject.rfc4514_string().startswith("CN=remote-")
    finally:
        scep.stop()
        hook.close()


def test_remote_mode_never_issues_without_a_verdict(tmp_path):
    d = tmp_path / "orphan"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"challenge": {"mode": "remote", "remote_url": f"http://127.0.0.1:{free_port()}/ScepActions",
                                                          "remote_timeout": 2}})
    server = RunningServer(d)
    try:
        result = ScepClient(server.url).enroll(rsa.generate_private_key(65537, 2048), name("orphan"), challenge=CHALLENGE)
        assert result.status is PkiStatus.FAILURE
        assert result.fail_info is FailInfo.BAD_REQUEST
        assert result.fail_info_text.startswith("RegistrationPointUnavailable")
        assert Store(f"sqlite:///{d / 'scepd.db'}").certificate_count() == 0
    finally:
        server.stop()


def test_webhook_deliveries_are_retried_until_accepted(tmp_path):
    hook = Receiver(statuses=(500, 503, 200))
    d = tmp_path / "retry"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"notifications": {"webhooks": [hook.url]}})
    server = RunningServer(d)
    try:
        result = ScepClient(server.url).enroll(rsa.generate_private_key(65537, 2048), name("retried"), challenge=CHALLENGE)
        assert result.status is PkiStatus.SUCCESS
        store = Store(f"sqlite:///{d / 'scepd.db'}")
        deadline = time.monotonic() + 30
        # The receiver sees the third attempt before the sender records its answer: wait for both.
        while time.monotonic() < deadline and not (len(hook.requests) >= 3 and store.delivery_states()[0]["delivered"]):
            time.sleep(0.3)
        assert len(hook.requests) == 3  # two refusals, then delivered
        states = store.delivery_states()
        assert states[0]["delivered"] and states[0]["attempts"] == 3 and states[0]["last_error"] == "HTTP 503"
    finally:
        server.stop()
        hook.close()


def test_mdm_webhook_decides(tmp_path):
    allow = Receiver(answer={"allow": True})
    deny = Receiver(answer={"allow": False, "reason": "device not in inventory"})
    try:
        for receiver, expected in ((allow, PkiStatus.SUCCESS), (deny, PkiStatus.FAILURE)):
            d = tmp_path / f"webhook-{expected.name}"
            create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
            update_config_file(d / "scepd.toml", {"challenge": {"webhook_url": receiver.url, "static": ""}})
            server = RunningServer(d)
            try:
                result = ScepClient(server.url).enroll(rsa.generate_private_key(65537, 2048), name("hooked"), challenge="whatever-the-mdm-gave")
                assert result.status is expected
                sent = json.loads(receiver.requests[-1][1])
                assert sent["challenge"] == "whatever-the-mdm-gave" and sent["subject"] == "CN=hooked"
                if expected is PkiStatus.FAILURE:
                    assert "device not in inventory" in result.fail_info_text
            finally:
                server.stop()
    finally:
        allow.close()
        deny.close()


def test_remote_mode_gets_its_bearer_token_by_oauth2_client_credentials(rp, tmp_path):
    rp_dir, rp_server, token = rp
    issuer = Receiver(answer={"access_token": token, "token_type": "Bearer", "expires_in": 3600})
    d = tmp_path / "oauth"
    create_instance(d, key_spec="rsa:2048", static_challenge="unused-here")
    update_config_file(d / "scepd.toml", {"challenge": {
        "mode": "remote", "remote_url": f"http://127.0.0.1:{rp_server.port}/ScepActions",
        "token_url": issuer.url, "client_id": "scepd-app", "client_secret": "app-secret", "scope": "scep/.default"}})
    server = RunningServer(d)
    try:
        c = ScepClient(server.url)
        for cn in ("oauth-1", "oauth-2"):
            challenge = run_scepd("challenge", "issue", "--dir", str(rp_dir), "--subject", f"CN={cn}").stdout.strip()
            result = c.enroll(rsa.generate_private_key(65537, 2048), name(cn), challenge=challenge)
            assert result.status is PkiStatus.SUCCESS, result.fail_info_text
        form = dict(pair.split("=") for pair in issuer.requests[0][1].decode().split("&"))
        assert form["grant_type"] == "client_credentials" and form["client_id"] == "scepd-app"
        assert len(issuer.requests) == 1  # cached until it expires
    finally:
        server.stop()
        issuer.close()
