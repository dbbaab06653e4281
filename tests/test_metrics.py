"""/metrics through a real `scepd serve`: a scrape parsed with prometheus-client's own parser,
the counters checked against a known number of enrollments (successes, and refusals with
their error codes), with one worker and with two (counts summed across the workers), and the
bearer token of [server] metrics_token_sha256 refused and accepted."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import CHALLENGE, RunningServer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from scepd.client import ScepClient
from scepd.protocol import PkiStatus
from scepd.registry.instance import create_instance

TOKEN = "scrape-token-for-tests"
KEY = rsa.generate_private_key(65537, 2048)  # one key for every request: the counts are the subject


def _samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, from the text as Prometheus would read it."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _enroll(url: str, cn: str, challenge: str | None) -> PkiStatus:
    with ScepClient(url) as client:  # a connection of its own: with two workers, either may answer
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return client.enroll(KEY, subject, challenge=challenge).status


def _scrape(server: RunningServer, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers=headers, timeout=10)


@pytest.fixture
def fresh_instance(tmp_path):
    create_instance(tmp_path, ca_subject="CN=metrics test CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    return tmp_path


def _run_known_enrollments(server: RunningServer) -> None:
    for i in range(3):
        assert _enroll(server.url, f"metrics-ok-{i}", CHALLENGE) is PkiStatus.SUCCESS
    assert _enroll(server.url, "metrics-wrong", "not-the-challenge") is PkiStatus.FAILURE
    assert _enroll(server.url, "metrics-missing", None) is PkiStatus.FAILURE
    assert httpx.get(server.url, params={"operation": "NoSuchOperation"}).status_code == 400


def _check_counts(samples: dict) -> None:
    total = "scepd_scep_requests_total"
    assert _value(samples, total, operation="PKCSReq", result="success", code="") == 3
    assert _value(samples, total, operation="PKCSReq", result="failure", code="ChallengePasswordIncorrect") == 1
    assert _value(samples, total, operation="PKCSReq", result="failure", code="ChallengePasswordMissing") == 1
    # A peer's unknown operation is counted, under "other": it cannot make series of its own.
    assert _value(samples, total, operation="other", result="failure", code="OperationUnknown") == 1
    assert _value(samples, total, operation="GetCACert", result="success", code="") >= 1
    assert _value(samples, "scepd_scep_request_duration_seconds_count", operation="PKCSReq") == 5
    # Every PKCSReq asked the registration point: three accepted, two refused.
    phase = "scepd_registration_point_duration_seconds_count"
    assert _value(samples, phase, phase="validation", result="ok") == 3
    assert _value(samples, phase, phase="validation", result="refused") == 2


def test_a_scrape_counts_a_known_number_of_enrollments(fresh_instance):
    server = RunningServer(fresh_instance)
    try:
        _run_known_enrollments(server)
        answer = _scrape(server)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = _samples(answer.text)
        _check_counts(samples)
        # Read when scraped: the CA's and RA's days to expiry, the queue, the CRL's age.
        roles = {dict(labels)["role"] for (name, labels) in samples if name == "scepd_certificate_expiry_days"}
        assert {"ca", "ra", "registration_point"} <= roles
        assert _value(samples, "scepd_store_up") == 1
        assert ("scepd_notification_queue_depth", ()) in samples
        assert _value(samples, "scepd_store_unavailable_total") == 0
    finally:
        server.stop()


def _counted_by_each_worker(directory: Path) -> dict[str, float]:
    """GetCACaps answered, per worker (by the pid in its counter file's name)."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        alone = directory.parent / f"one-worker-{path.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(alone))
        counts[path.stem.split("_")[-1]] = _value(_samples(generate_latest(registry).decode()), "scepd_scep_requests_total",
                                                  operation="GetCACaps", result="success", code="")
    return counts


def _caps_by_pid(server: RunningServer, directory: Path) -> dict[str, float]:
    """Ask GetCACaps, a few at once on connections of their own, until both workers have answered some."""
    url = f"http://127.0.0.1:{server.port}/scep?operation=GetCACaps"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(25):
            assert all(r.status_code == 200 for r in pool.map(lambda _: httpx.get(url, timeout=10), range(16)))
            counts = _counted_by_each_worker(directory)
            if len([n for n in counts.values() if n]) >= 2:
                return counts
    return counts


def test_counters_are_summed_across_two_workers(fresh_instance):
    server = RunningServer(fresh_instance, env={"SCEPD_SERVER_WORKERS": "2"})
    try:
        _run_known_enrollments(server)
        # Each scrape lands on either worker; each answers with the sum of both.
        for _ in range(4):
            _check_counts(_samples(_scrape(server).text))
        # Each worker's file exists from its start: what proves both count is a count in each.
        by_pid = _caps_by_pid(server, fresh_instance / "metrics.d")
        assert len([n for n in by_pid.values() if n]) == 2, by_pid
        summed = _value(_samples(_scrape(server).text), "scepd_scep_requests_total", operation="GetCACaps",
                        result="success", code="")
        assert summed == sum(by_pid.values())  # the scrape is the sum of both
    finally:
        server.stop()
    # The next start begins from zero: the directory is cleared, not summed into.
    server = RunningServer(fresh_instance, env={"SCEPD_SERVER_WORKERS": "2"})
    try:
        samples = _samples(_scrape(server).text)
        assert _value(samples, "scepd_scep_requests_total", operation="PKCSReq", result="success", code="") == 0
    finally:
        server.stop()


def test_the_bearer_token_is_asked_for_when_configured(fresh_instance):
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    server = RunningServer(fresh_instance, env={"SCEPD_SERVER_METRICS_TOKEN_SHA256": digest})
    try:
        refused = _scrape(server)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert "metrics_token_sha256" in refused.text
        assert _scrape(server, "wrong-token").status_code == 401
        accepted = _scrape(server, TOKEN)
        assert accepted.status_code == 200
        assert any(f.name == "scepd_scep_requests" for f in text_string_to_metric_families(accepted.text))
    finally:
        server.stop()


def test_metrics_port_serves_metrics_alone(fresh_instance):
    from conftest import free_port

    port = free_port()
    server = RunningServer(fresh_instance, env={"SCEPD_SERVER_METRICS_PORT": str(port)})
    try:
        assert _enroll(server.url, "metrics-port", CHALLENGE) is PkiStatus.SUCCESS
        assert _scrape(server).status_code == 404  # not on the main port
        samples = _samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        assert _value(samples, "scepd_scep_requests_total", operation="PKCSReq", result="success", code="") == 1
        assert httpx.get(f"http://127.0.0.1:{port}/scep", timeout=10).status_code == 404
    finally:
        server.stop()


def test_the_workers_directory_is_emptied_and_the_environment_restored(tmp_path, monkeypatch):
    from scepd import metrics
    from scepd.server.metrics import metrics_for_workers

    monkeypatch.delenv(metrics.MULTIPROCESS_ENV, raising=False)
    (tmp_path / "metrics.d").mkdir()
    (tmp_path / "metrics.d" / "counter_1234.db").write_bytes(b"left by the previous run")
    with metrics_for_workers(tmp_path) as directory:
        assert os.environ[metrics.MULTIPROCESS_ENV] == str(directory) and not any(directory.iterdir())
    assert metrics.MULTIPROCESS_ENV not in os.environ  # a caller in the same process is not left in it


def test_the_metrics_listener_closes_stalled_connections_and_caps_them():
    from scepd.server.metrics import MetricsListener

    class Endpoint:
        def answer(self, authorization):
            return 200, {"Content-Type": "text/plain"}, b"scepd_up 1\n"

    listener = MetricsListener(Endpoint(), "127.0.0.1", 0, timeout=1.0, connections=2)
    listener.start()
    address = ("127.0.0.1", listener.port)
    try:
        idle = socket.create_connection(address)
        slow = socket.create_connection(address)  # slowloris: a byte now and then, never a whole request

        def dribble():
            with contextlib.suppress(OSError):
                for _ in range(20):
                    slow.send(b"G")
                    time.sleep(0.2)

        threading.Thread(target=dribble, daemon=True).start()
        time.sleep(0.3)
        extra = socket.create_connection(address)  # over the cap: closed unanswered
        extra.settimeout(2)
        assert extra.recv(100) == b""
        started = time.monotonic()
        for stalled in (idle, slow):
            stalled.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                while stalled.recv(100):
                    pass
        assert time.monotonic() - started < 2.5  # within the timeout, for all the bytes dribbled in
        answer = httpx.get(f"http://127.0.0.1:{listener.port}/metrics", timeout=5)  # and served again
        assert answer.status_code == 200 and answer.text == "scepd_up 1\n"
    finally:
        listener.stop()
        for sock in (idle, slow, extra):
            sock.close()
