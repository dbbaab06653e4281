"""The HTTP layer alone: server/ routes in Starlette's TestClient against stub services, so
that what is HTTP's (statuses, headers, transport decoding, the Intune answer shape) is seen
apart from what the services decide."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.testclient import TestClient

from scepd.protocol.errors import ErrorCode, Refusal
from scepd.server.app import create_app
from scepd.service.outcome import OperationResult

LIMIT = 4096


class StubScep:
    ca_caps = "POSTPKIOperation\nSHA-256\n"
    ca_certs = ("application/x-x509-ca-cert", b"\x30\x00")
    next_ca_certs = None

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, str | None]] = []
        self.crl: object = None

    def pki_operation(self, der: bytes, client: str | None = None) -> OperationResult:
        self.messages.append((der, client))
        return OperationResult(200, "application/x-pki-message", b"reply:" + der, transaction_id="T-1",
                               message_type="PKCS_REQ", status="SUCCESS")

    def crl_for(self, key_id: str):
        if isinstance(self.crl, Exception):
            raise self.crl
        return self.crl


class StubRpApi:
    def __init__(self, *, has_tokens=True, verdict=None, challenge=None) -> None:
        self.has_tokens = has_tokens
        self.verdict = verdict
        self.challenge = challenge or {"challenge": "c", "scep_url": "https://x/scep", "jti": "j", "expires_at": "t"}
        self.received: list[tuple[str, dict]] = []

    def authorize(self, header):
        if not self.has_tokens:
            return Refusal(ErrorCode.API_UNAUTHORIZED, "no API token is configured: scepd registry token new")
        return None if header == "Bearer good" else Refusal(ErrorCode.API_UNAUTHORIZED, "a valid bearer token is required")

    def issue_challenge(self, body):
        if isinstance(self.challenge, Exception):
            raise self.challenge
        return self.challenge

    def validate_request(self, transaction_id, csr_der):
        return self.verdict

    def record_received(self, kind, payload):
        self.received.append((kind, payload))
        return self.verdict if self.verdict and self.verdict.code is ErrorCode.STORE_UNAVAILABLE else None


class StubStore:
    busy_timeout = 1.5


class StubServices:
    def __init__(self, rp_api: StubRpApi | None = None) -> None:
        self.scep = StubScep()
        self.rp_api = rp_api or StubRpApi()
        self.store = StubStore()


def client_for(services: StubServices) -> TestClient:
    return TestClient(create_app(services, LIMIT, threads=2))


GOOD = {"Authorization": "Bearer good"}
VALIDATE = {"request": {"transactionId": "T-9", "certificateRequest": base64.b64encode(b"\x30\x00").decode()}}


def test_scep_route_decodes_the_message_as_clients_send_it():
    services = StubServices()
    der = b"\x30\x82\x03\x00" + bytes(range(256)) * 3  # a SEQUENCE; its base64 has + and /
    text = base64.b64encode(der).decode()
    with client_for(services) as client:
        caps = client.get("/scep", params={"operation": "GetCACaps"})
        assert caps.status_code == 200 and caps.text == StubScep.ca_caps
        # Unescaped + (Apple, Cisco), URL-safe without padding, line breaks; POSTed base64.
        for query in (f"operation=PKIOperation&message={text}",
                      "operation=PKIOperation&message=" + base64.urlsafe_b64encode(der).decode().rstrip("="),
                      "operation=PKIOperation&message=" + text[:76] + "%0A" + text[76:]):
            response = client.get(f"/certsrv/mscep/mscep.dll/pkiclient.exe?{query}")
            assert response.status_code == 200 and response.content == b"reply:" + der, query
        assert client.post("/scep?operation=PKIOperation", content=text.encode()).content == b"reply:" + der
        assert client.post("/scep?operation=PKIOperation", content=der).content == b"reply:" + der
    assert [m for m, _ in services.scep.messages] == [der] * 5


@pytest.mark.parametrize("request_args,status,code", [
    (("GET", "/scep?operation=GetNextCACert"), 404, "NoNextCa"),
    (("GET", "/scep?operation=Nope"), 400, "OperationUnknown"),
    (("GET", "/scep?operation=PKIOperation"), 400, "MessageMissing"),
    (("GET", "/scep?operation=PKIOperation&message=%%%"), 400, "MessageUndecodable"),
    (("GET", "/scep?operation=PKIOperation&message=" + "A" * LIMIT), 414, "RequestTooLarge"),
    (("POST", "/scep?operation=PKIOperation"), 400, "MessageMissing"),
])
def test_scep_route_refuses_what_is_not_a_message_with_its_code(request_args, status, code):
    services = StubServices()
    with client_for(services) as client:
        response = client.request(*request_args)
    assert response.status_code == status and response.text.startswith(f"{code}: "), response.text
    assert "\nRemedy: " in response.text
    assert services.scep.messages == []


def test_a_body_over_the_limit_is_413_with_connection_close():
    services = StubServices()
    with client_for(services) as client:
        scep = client.post("/scep?operation=PKIOperation", content=b"\x30" * (LIMIT + 1))
        api = client.post("/api/v1/challenges", content=b"{" * (LIMIT + 1), headers=GOOD)
    assert scep.status_code == 413 and scep.text.startswith(f"RequestTooLarge: the body exceeds {LIMIT} bytes")
    assert api.status_code == 413 and api.json()["code"] == "RequestTooLarge"
    assert scep.headers["connection"] == api.headers["connection"] == "close"


def test_api_authorization_is_401_with_a_challenge_header_or_403_when_switched_off():
    with client_for(StubServices()) as client:
        for headers in ({}, {"Authorization": "Bearer bad"}):
            response = client.post("/api/v1/challenges", json={}, headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert response.json() == {"code": "Unauthorized", "errorDescription": "a valid bearer token is required"}
        assert client.post("/api/v1/challenges", json={}, headers=GOOD).status_code == 201
    with client_for(StubServices(StubRpApi(has_tokens=False))) as client:
        response = client.post("/api/v1/challenges", json={}, headers=GOOD)
    assert response.status_code == 403 and "www-authenticate" not in response.headers
    assert response.json()["code"] == "Unauthorized"


@pytest.mark.parametrize("challenge,status,code", [
    (Refusal(ErrorCode.REQUEST_MALFORMED, "colour"), 400, "RequestMalformed"),
    (Refusal(ErrorCode.REGISTRATION_POINT_KEY_MISSING, "run scepd doctor --fix"), 503, "RegistrationPointKeyMissing"),
    (Refusal(ErrorCode.STORE_UNAVAILABLE, "database is locked"), 503, "StoreUnavailable"),
    (RuntimeError("a bug"), 400, "InternalError"),
])
def test_challenge_refusals_take_the_error_tables_status(challenge, status, code):
    with client_for(StubServices(StubRpApi(challenge=challenge))) as client:
        response = client.post("/api/v1/challenges", json={"subject": "CN=x"}, headers=GOOD)
    assert response.status_code == status and response.json()["code"] == code, response.text
    assert "a bug" not in response.text


def test_validate_request_answers_verdicts_in_intunes_shape_and_a_store_outage_as_503():
    verdicts = {None: (200, {"code": "Success", "errorDescription": ""}),
                Refusal(ErrorCode.CHALLENGE_REPLAYED, "used"): (200, {"code": "ChallengeReplayed", "errorDescription": "used"}),
                Refusal(ErrorCode.REGISTRATION_POINT_KEY_MISSING, "gone"): (200, {"code": "RegistrationPointKeyMissing",
                                                                                 "errorDescription": "gone"}),
                Refusal(ErrorCode.STORE_UNAVAILABLE, "locked"): (503, {"code": "StoreUnavailable", "errorDescription": "locked"})}
    for verdict, (status, answer) in verdicts.items():
        with client_for(StubServices(StubRpApi(verdict=verdict))) as client:
            response = client.post("/ScepActions/validateRequest", json=VALIDATE, headers=GOOD)
        assert (response.status_code, response.json()) == (status, answer), verdict


def test_a_notification_the_store_cannot_take_is_503():
    locked = Refusal(ErrorCode.STORE_UNAVAILABLE, "locked")
    with client_for(StubServices(StubRpApi(verdict=locked))) as client:
        response = client.post("/ScepActions/successNotification", json={"notification": {}}, headers=GOOD)
    assert response.status_code == 503 and response.json() == {"code": "StoreUnavailable", "errorDescription": "locked"}


def test_scep_actions_refuse_malformed_bodies_and_unknown_actions():
    services = StubServices()
    with client_for(services) as client:
        for body in ({"request": {}}, {"request": "x"}, {"request": {"transactionId": 1, "certificateRequest": "%%"}},
                     {"notification": [1]}, [1]):
            action = "successNotification" if "notification" in str(body) else "validateRequest"
            response = client.post(f"/ScepActions/{action}", json=body, headers=GOOD)
            assert response.status_code == 400 and response.json()["code"] == "RequestMalformed", body
            assert response.json()["errorDescription"].startswith(f"malformed {action} body: ")
        unknown = client.post("/ScepActions/somethingElse", json={}, headers=GOOD)
        told = client.post("/ScepActions/failureNotification", json={"notification": {"transactionId": "T"}}, headers=GOOD)
    assert unknown.status_code == 404 and unknown.json() == {"code": "NotFound", "errorDescription": "no action somethingElse"}
    assert told.status_code == 200 and told.json() == {"code": "Success", "errorDescription": ""}
    assert services.rp_api.received == [("failure", {"transactionId": "T"})]


def test_crl_route_answers_404_for_no_such_ca_and_503_with_retry_after_when_the_store_is_locked():
    services = StubServices()
    with client_for(services) as client:
        missing = client.get("/crl/ABCDEF.crl")
        services.scep.crl = Refusal(ErrorCode.STORE_UNAVAILABLE, "the CRL cannot be read or re-signed now: disk full")
        refused = client.get("/crl/abcdef.crl")
        services.scep.crl = RuntimeError("a bug")
        bug = client.get("/crl/abcdef.crl")
    assert missing.status_code == 404 and missing.text == "no CA with that key identifier\n"
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.text.startswith("StoreUnavailable: the CRL cannot be read or re-signed now: disk full")
    assert bug.status_code == 400 and bug.text.startswith("InternalError: the server failed to process the request")


def test_both_content_length_and_transfer_encoding_are_refused_before_any_route():
    services = StubServices()
    with client_for(services) as client:
        response = client.post("/scep?operation=PKIOperation", content=b"\x30\x00",
                               headers={"Content-Length": "2", "Transfer-Encoding": "chunked"})
    assert response.status_code == 400 and response.headers["connection"] == "close"
    assert response.text.startswith("RequestMalformed: the request has both Content-Length and Transfer-Encoding")
    assert services.scep.messages == []


def test_a_crl_is_served_as_der():
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(x509.Name([])).last_update(now)
           .next_update(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    services = StubServices()
    services.scep.crl = crl
    with client_for(services) as client:
        response = client.get("/crl/abcdef.crl")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pkix-crl"
    assert x509.load_der_x509_crl(response.content) == crl


def test_worker_threads_run_calls_beside_the_loop_and_hand_back_results_and_errors():
    import asyncio
    import threading
    import time

    from scepd.server.threads import WorkerThreads

    threads = WorkerThreads(2, "test-workers")
    running, most = [0], [0]
    lock = threading.Lock()

    def busy(n):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return n * 2, threading.current_thread().name

    def broken():
        raise KeyError("not here")

    async def scenario():
        loop_thread = threading.current_thread().name
        results = await asyncio.gather(*(threads.run(busy, n) for n in range(6)))
        assert [value for value, _ in results] == [0, 2, 4, 6, 8, 10]
        assert {name for _, name in results} <= {"test-workers_0", "test-workers_1"}
        assert loop_thread not in {name for _, name in results}
        with pytest.raises(KeyError, match="not here"):
            await threads.run(broken)
        # A caller that stops waiting: the call finishes on its thread, its result is dropped.
        task = asyncio.ensure_future(threads.run(busy, 99))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await threads.run(busy, 1))[0] == 2  # and the threads go on serving

    asyncio.run(scenario())
    assert most[0] == 2  # never more at once than the threads there are
    threads.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("test-workers")]
