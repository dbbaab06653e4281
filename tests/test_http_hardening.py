"""HTTP and parser hardening against hostile peers: bounded durations, JSON nesting and size
limits (API bodies, MDM challenges that need no credentials, remote answers), a 413 the
client actually reads, Content-Length with Transfer-Encoding refused, stalled headers timed
out, and a start-up check that knows every validator."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import CHALLENGE, RunningServer, free_port, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc import jwe, jws
from joserfc.jwk import ECKey

from scepd.ca.keys import load_certificate, load_key
from scepd.challenge.base import ChallengeRequest
from scepd.challenge.mdm import THUMBPRINT
from scepd.protocol.fingerprints import jose_thumbprint
from scepd.challenge.remote import MAX_ANSWER_BYTES, BearerToken, RemoteRegistrationPoint, WebhookValidator
from scepd.client import ScepClient, build_csr
from scepd.protocol.errors import ErrorCode
from scepd.peerjson import JsonRefused, loads, nesting_depth
from scepd.protocol import FailInfo, PkiStatus
from scepd.protocol.csr import parse_csr
from scepd.registry.config import ConfigError, parse_duration, update_config_file
from scepd.registry.instance import create_instance

DEEP = b"[" * 3000 + b"]" * 3000
TWENTY_MB = 20 << 20


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    """A server with an API token and a test-sized header timeout."""
    d = tmp_path_factory.mktemp("hardened")
    create_instance(d, ca_subject="CN=Hardening CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    token = run_scepd("registry", "token", "new", "--dir", str(d)).stdout.strip()
    server = RunningServer(d, env={"SCEPD_SERVER_HEADER_TIMEOUT": "1s"})
    yield d, server, {"Authorization": f"Bearer {token}"}
    server.stop()


def base(server) -> str:
    return f"http://127.0.0.1:{server.port}"


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within `timeout`."""
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return data, True
        data += chunk
    return data, False


# --- durations --------------------------------------------------------------------------------


def test_durations_beyond_ten_years_are_refused_everywhere(hardened, tmp_path):
    d, server, auth = hardened
    for validity in ("99999999999d", "3651d", "1" * 5000 + "s"):
        response = httpx.post(f"{base(server)}/api/v1/challenges", json={"subject": "CN=x", "validity": validity}, headers=auth)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "RequestMalformed" and "3650d" in response.json()["errorDescription"]
        with pytest.raises(ConfigError, match="3650d"):
            parse_duration(validity)
    assert parse_duration("3650d").days == 3650
    # The configuration: refused when written, naming the bound.
    other = tmp_path / "conf"
    create_instance(other, key_spec="rsa:2048", static_challenge=CHALLENGE)
    with pytest.raises(ConfigError, match="3650d"):
        update_config_file(other / "scepd.toml", {"crl": {"validity": "99999999999d"}})
    # The command line.
    result = run_scepd("otp", "new", "--dir", str(d), "--validity", "99999999999d")
    assert result.returncode == 2 and "3650d" in result.stderr
    assert server.alive()


# --- JSON nesting and size -------------------------------------------------------------------------


def test_the_json_reader_measures_nesting_before_parsing():
    assert nesting_depth('{"a": [1, {"b": "[[[[\\"]]"}]}') == 3  # brackets in strings do not count
    for document in (DEEP, b'{"a": ' * 3000 + b"1" + b"}" * 3000):
        with pytest.raises(JsonRefused, match="deeper than 32 levels"):
            loads(document, max_bytes=1 << 20)
    with pytest.raises(JsonRefused, match="more than the 10 allowed"):
        loads(b'{"a": "0123456789"}', max_bytes=10)
    assert loads(b'{"request": {"a": [1]}}', max_bytes=100) == {"request": {"a": [1]}}


@pytest.mark.parametrize("path", ["/api/v1/challenges", "/ScepActions/validateRequest", "/ScepActions/successNotification"])
def test_deeply_nested_json_bodies_are_refused_with_a_reason(hardened, path):
    d, server, auth = hardened
    for body in (DEEP, b'{"request": ' + DEEP + b', "notification": {}}'):
        response = httpx.post(base(server) + path, content=body, headers=auth)
        assert response.status_code == 400, response.text
        assert response.json() == {"code": "RequestMalformed", "errorDescription": "the JSON document nests deeper than 32 levels"}
    not_json = httpx.post(base(server) + path, content=b"{", headers=auth)
    assert not_json.status_code == 400 and not_json.json()["code"] == "RequestMalformed"
    assert server.alive()


def _encryption_and_signing(d):
    return (load_certificate(d / "rp/encryption.pem"),
            (load_certificate(d / "rp/mdm-signing.pem"), load_key(d / "rp/mdm-signing.key")))


def _jwe(d, plaintext: bytes, header: dict | None = None) -> str:
    enc, _ = _encryption_and_signing(d)
    return jwe.encrypt_compact(header or {"alg": "ECDH-ES+A128KW", "enc": "A128GCM"}, plaintext, ECKey.import_key(enc.public_key()))


def _deep_jwe_header(d) -> str:
    return b64url(DEEP) + ".a.b.c.d"


def _deep_jws_header(d) -> str:
    return _jwe(d, (b64url(DEEP) + ".e30.c2ln").encode())


def _deep_signed_claims(d) -> str:
    _, (cert, key) = _encryption_and_signing(d)
    signed = jws.serialize_compact({"alg": "ES256", THUMBPRINT: jose_thumbprint(cert)}, DEEP.decode(), ECKey.import_key(key))
    return _jwe(d, signed.encode())


def _crit_not_a_list(d) -> str:
    """A JWE header joserfc trips over with a TypeError: "crit" must be a list."""
    parts = _jwe(d, b"x.y.z").split(".")
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=="))
    return ".".join([b64url(json.dumps({**header, "crit": 5}).encode()), *parts[1:]])


MDM_CASES = {
    "deep JWE header": (_deep_jwe_header, "ChallengeDecodingError"),
    "deep JWS header": (_deep_jws_header, "ChallengeDeserializationError"),
    "deep signed claims": (_deep_signed_claims, "ChallengeDeserializationError"),
    "crit not a list": (_crit_not_a_list, "ChallengeDecryptionError"),
}


@pytest.mark.parametrize("case", sorted(MDM_CASES))
def test_a_hostile_mdm_challenge_is_refused_by_its_intune_name(hardened, case):
    """The challenge needs no credentials: it is a CSR's challengePassword, over SCEP and
    over the validateRequest API alike."""
    d, server, auth = hardened
    make, code = MDM_CASES[case]
    challenge = make(d)
    key = rsa.generate_private_key(65537, 2048)
    result = ScepClient(server.url).enroll(key, name("hostile"), challenge=challenge)
    assert result.status is PkiStatus.FAILURE and result.fail_info is FailInfo.BAD_REQUEST
    assert result.fail_info_text.startswith(f"{code}: "), result.fail_info_text
    csr = build_csr(key, name("hostile"), challenge=challenge).public_bytes(serialization.Encoding.DER)
    body = {"request": {"transactionId": "T-hostile", "certificateRequest": base64.b64encode(csr).decode(), "callerInfo": "t"}}
    answer = httpx.post(f"{base(server)}/ScepActions/validateRequest", json=body, headers=auth)
    assert answer.status_code == 200 and answer.json()["code"] == code, answer.text


# --- hostile remote answers ---------------------------------------------------------------------


class Hostile:
    """An HTTP endpoint that answers as badly as told: nested, endless, trickling, gzipped."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    hostile.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up reading, as it should

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ScepActions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if self.kind == "deep":
            handler.send_header("Content-Length", str(len(DEEP)))
            handler.end_headers()
            handler.wfile.write(DEEP)
        elif self.kind == "endless":  # no length: the body ends when the connection does
            handler.end_headers()
            while True:
                handler.wfile.write(b" " * 65536)
        elif self.kind == "trickle":
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            for _ in range(1000):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.2)
        elif self.kind == "gzip bomb":
            bomb = gzip.compress(b" " * (64 << 20))
            handler.send_header("Content-Encoding", "gzip")
            handler.send_header("Content-Length", str(len(bomb)))
            handler.end_headers()
            handler.wfile.write(bomb)
        elif self.kind == "not an object":
            handler.send_header("Content-Length", "3")
            handler.end_headers()
            handler.wfile.write(b"[1]")

    def close(self) -> None:
        self.server.shutdown()


def _request(cn: str = "remote") -> ChallengeRequest:
    key = rsa.generate_private_key(65537, 2048)
    csr = parse_csr(build_csr(key, name(cn), challenge="anything").public_bytes(serialization.Encoding.DER))
    return ChallengeRequest("T-remote", "anything", csr)


def _within(seconds: float, function):
    """function(), failing (not hanging) when it takes longer than `seconds`."""
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(function()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"no answer within {seconds} s"
    return outcome[0]


@pytest.mark.parametrize("kind", ["deep", "endless", "trickle", "gzip bomb", "not an object"])
def test_a_hostile_remote_answer_is_a_named_refusal(kind):
    hostile = Hostile(kind)
    try:
        for validator in (RemoteRegistrationPoint(hostile.url, BearerToken(static="t"), timeout=2),
                          WebhookValidator(hostile.url + "/hook", timeout=2)):
            verdict = _within(15, lambda: validator.verify(_request(), None))
            assert verdict.refusal is not None and verdict.refusal.code is ErrorCode.REGISTRATION_POINT_UNAVAILABLE, verdict
        # The token endpoint is a peer too.
        remote = RemoteRegistrationPoint(hostile.url, BearerToken(token_url=hostile.url + "/token", timeout=2), timeout=2)
        verdict = _within(15, lambda: remote.verify(_request(), None))
        assert verdict.refusal.code is ErrorCode.REGISTRATION_POINT_UNAVAILABLE
        assert "no bearer token" in verdict.refusal.reason
    finally:
        hostile.close()
    assert MAX_ANSWER_BYTES == 65536


def test_serve_starts_in_remote_mode_with_neither_static_nor_one_time_passwords(tmp_path):
    """A remote registration point is a validator: the start-up check counts it. Its hostile
    answer then refuses the enrollment by name."""
    hostile = Hostile("deep")
    d = tmp_path / "remote-only"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    server = RunningServer(d, env={"SCEPD_CHALLENGE_MODE": "remote", "SCEPD_CHALLENGE_REMOTE_URL": hostile.url,
                                   "SCEPD_CHALLENGE_STATIC": "", "SCEPD_CHALLENGE_ONE_TIME_PASSWORDS": "false",
                                   "SCEPD_CHALLENGE_REMOTE_TIMEOUT": "2"})
    try:
        result = ScepClient(server.url).enroll(rsa.generate_private_key(65537, 2048), name("remote"), challenge="any")
        assert result.status is PkiStatus.FAILURE
        assert result.fail_info_text.startswith("RegistrationPointUnavailable: "), result.fail_info_text
        assert "nests deeper than 32 levels" in result.fail_info_text
    finally:
        server.stop()
        hostile.close()


def test_serve_refuses_to_start_only_when_nothing_could_accept_a_request(tmp_path):
    d = tmp_path / "nothing"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    env = {"SCEPD_CHALLENGE_MODE": "remote", "SCEPD_CHALLENGE_REMOTE_URL": "",
           "SCEPD_CHALLENGE_STATIC": "", "SCEPD_CHALLENGE_ONE_TIME_PASSWORDS": "false"}
    result = run_scepd("serve", "--dir", str(d), "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert "FAIL challenge.validators: no validator can accept a request" in result.stderr
    assert "remote_url" in result.stderr
    # Locally, with neither static nor one-time passwords, MDM challenges still can be.
    doctor = run_scepd("doctor", "--dir", str(d), env={"SCEPD_CHALLENGE_STATIC": "", "SCEPD_CHALLENGE_ONE_TIME_PASSWORDS": "false"})
    assert "challenge.validators" in doctor.stdout + doctor.stderr
    assert "FAIL challenge.validators" not in doctor.stdout + doctor.stderr


# --- the 413 the client reads ----------------------------------------------------------------------


@pytest.mark.parametrize("version,extra", [("1.1", ""), ("1.1", "Connection: close\r\n"), ("1.0", "")],
                         ids=["keep-alive", "client-close", "http-1.0"])
def test_a_20_mb_body_gets_a_413_the_client_reads(hardened, version, extra):
    """The client sends all of it before reading, as simple clients do: the server answers
    from Content-Length, then reads and drops the body, so that neither the send nor the
    read meets a reset, and then closes."""
    d, server, auth = hardened
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"POST /scep?operation=PKIOperation HTTP/{version}\r\nHost: t\r\nContent-Length: {TWENTY_MB}\r\n"
                  f"Content-Type: application/x-pki-message\r\n{extra}\r\n".encode())
        s.sendall(b"\x30" * TWENTY_MB)  # ConnectionResetError here if the server closed early
        data, closed = read_until_closed(s, 15)
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert b"RequestTooLarge: the body exceeds 65536 bytes" in data and b"connection: close" in data.lower()
    assert closed


def _head_of_a_20_mb_post(server) -> tuple[bytes, float]:
    """Only the head of a POST declaring 20 MB, no body: what the server sends up to the end
    of its answer's head (at most 2 s), and how long that took. The client then hangs up."""
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"POST /scep?operation=PKIOperation HTTP/1.1\r\nHost: t\r\nContent-Length: {TWENTY_MB}\r\n"
                  "Content-Type: application/x-pki-message\r\n\r\n".encode())
        started = time.monotonic()
        s.settimeout(0.2)
        data = b""
        while b"\r\n\r\n" not in data and time.monotonic() - started < 2:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
        return data, time.monotonic() - started


def test_a_declared_20_mb_body_gets_its_413_before_any_of_it_is_sent(hardened):
    """The 413 comes from Content-Length alone: to the request head with no body at all, it
    is read within 2 s (before the 1 s body timeout's 408 could be the answer instead)."""
    _dir, server, _auth = hardened
    data, elapsed = _head_of_a_20_mb_post(server)
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert elapsed < 2, f"the 413 took {elapsed:.2f} s"


def test_a_client_hanging_up_after_reading_the_413_leaves_no_traceback(hardened):
    """A client that reads the 413's head and hangs up (the body it declared never sent, as
    clients do) is no error of the server's: nothing at ERROR, no traceback in its log."""
    _dir, server, _auth = hardened
    logged_before = len(server.stderr_path.read_text())
    for _ in range(5):
        data, _elapsed = _head_of_a_20_mb_post(server)
        assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert httpx.get(f"{base(server)}/healthz").status_code == 200  # the hang-ups have been handled
    logged = server.stderr_path.read_text()[logged_before:]
    assert "Traceback" not in logged and "ERROR" not in logged, logged


def test_deeply_nested_json_without_a_token_is_refused_as_unauthorized(hardened):
    """The token is checked before the body is read: a body nested 3,000 deep with no
    Authorization header gets the 401 of a missing token, with its reason, never a 500."""
    _dir, server, _auth = hardened
    logged_before = len(server.stderr_path.read_text())
    for path in ("/api/v1/challenges", "/ScepActions/validateRequest"):
        response = httpx.post(base(server) + path, content=DEEP, headers={"Content-Type": "application/json"})
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"code": "Unauthorized", "errorDescription": "a valid bearer token is required"}
    assert server.alive()
    assert "Traceback" not in server.stderr_path.read_text()[logged_before:]


def test_httpx_reads_the_413_of_a_20_mb_body(hardened):
    d, server, auth = hardened
    for headers in ({}, {"Connection": "close"}):
        response = httpx.post(f"{server.url}?operation=PKIOperation", content=b"\x30" * TWENTY_MB, headers=headers, timeout=30)
        assert response.status_code == 413 and response.text.startswith("RequestTooLarge: "), response.text
        assert response.headers["connection"] == "close"
    api = httpx.post(f"{base(server)}/api/v1/challenges", content=b"{" * TWENTY_MB, headers=auth, timeout=30)
    assert api.status_code == 413 and api.json()["code"] == "RequestTooLarge"


# --- request framing -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/scep?operation=PKIOperation", "/ScepActions/validateRequest"])
def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(hardened, path):
    """RFC 9112 6.3; the GET behind the chunked body, which a proxy framing by Content-Length
    would take for body, is never answered."""
    d, server, auth = hardened
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        data, closed = read_until_closed(s, 10)
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert b"RequestMalformed: the request has both Content-Length and Transfer-Encoding" in data
    assert data.count(b"HTTP/1.1 ") == 1 and closed


@pytest.mark.parametrize("request_bytes", [b"NOT HTTP AT ALL\r\n\r\n",
                                           b"POST /scep HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                                           b"GET /scep HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n"],
                         ids=["garbage", "two lengths", "headers too large"])
def test_what_h11_cannot_parse_is_refused_with_a_code(hardened, request_bytes):
    d, server, auth = hardened
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(request_bytes)
        data, closed = read_until_closed(s, 10)
    assert data.startswith(b"HTTP/1.1 400 ") and b"\r\n\r\nRequestMalformed: the request is not valid HTTP/1.1" in data, data
    assert closed


# --- stalled headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"GET /scep", b"", b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /sc"],
                         ids=["partial request line", "nothing", "partial second request"])
def test_a_connection_that_does_not_finish_its_headers_is_closed(hardened, sent):
    d, server, auth = hardened
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(sent)
        started = time.monotonic()
        data, closed = read_until_closed(s, 8)
    assert closed, "the connection is still open"
    assert time.monotonic() - started < 4  # SCEPD_SERVER_HEADER_TIMEOUT=1s, uvicorn's keep-alive 5 s
    assert data.count(b"HTTP/1.1 200 ") == sent.count(b"/healthz")
    if sent.startswith(b"GET /scep"):
        assert any("no complete request header" in line for line in server.log_lines())


@pytest.mark.parametrize("path", ["/scep?operation=PKIOperation", "/api/v1/challenges"])
def test_a_body_that_stalls_after_the_headers_is_refused_in_time(hardened, path):
    """Headers in time, then ten bytes of a declared thousand and nothing more: the header
    timeout (1 s here) holds for the body too, answered RequestTimeout (408) and closed."""
    d, server, auth = hardened
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth['Authorization']}\r\n"
                  "Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n0123456789".encode())
        started = time.monotonic()
        data, closed = read_until_closed(s, 8)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"RequestTimeout" in data and closed
    assert time.monotonic() - started < 4


def test_keep_alive_still_serves_clients_that_send_their_headers(hardened):
    d, server, auth = hardened
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(f"{base(server)}/healthz").status_code == 200
            time.sleep(0.5)


def test_header_timeout_is_a_positive_duration(tmp_path):
    d = tmp_path / "timeouts"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    for bad, why in (("0s", "header_timeout must be longer than 0s"), ("soon", "header_timeout: 'soon' is not a duration")):
        with pytest.raises(ConfigError, match=why):
            update_config_file(d / "scepd.toml", {"server": {"header_timeout": bad}})
    assert update_config_file(d / "scepd.toml", {"server": {"header_timeout": "30s"}}).server.header_timeout_seconds == 30
