"""GET /metrics: Prometheus's text format, on the main port or on `[server] metrics_port`
alone, optionally behind a bearer token (`[server] metrics_token_sha256`).

A scrape is the counters of scepd.metrics (every worker's, summed, with `--workers N`) and
what is read when scraped: the notification queue, the CRLs' age, the days until the CA, RA
and registration point certificates expire. Those are read by whichever worker answers the
scrape, from the store and the keys it serves with, so no worker's stale copy can be summed
into them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response

from scepd import metrics

log = logging.getLogger("scepd.server")

# The text format every Prometheus reads (2.x and 3.x); generate_latest writes it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The per-instance directory the workers of one `scepd serve` write their counters to.
MULTIPROCESS_DIRECTORY = "metrics.d"


@contextlib.contextmanager
def metrics_for_workers(directory: Path):
    """While `scepd serve --workers N` runs its workers: an empty directory for their
    counters in the instance (what a previous run left would be summed in), named in the
    environment the workers inherit, and this process's environment as it was afterwards."""
    target = Path(directory) / MULTIPROCESS_DIRECTORY
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o700)
    before = os.environ.get(metrics.MULTIPROCESS_ENV)
    os.environ[metrics.MULTIPROCESS_ENV] = str(target)
    try:
        yield target
    finally:
        if before is None:
            os.environ.pop(metrics.MULTIPROCESS_ENV, None)
        else:
            os.environ[metrics.MULTIPROCESS_ENV] = before


def worker_exited() -> None:
    """A worker's live gauges (requests in progress) leave the sums when it stops."""
    if metrics.multiprocess():
        multiprocess.mark_process_dead(os.getpid())


class _ScrapeTime:
    """The gauges read when scraped, from the current services."""

    def __init__(self, services) -> None:
        self._services = services

    def collect(self):
        services = self._services()
        now = services.scep.clock.now()
        expiry = GaugeMetricFamily("scepd_certificate_expiry_days", "Days until a certificate scepd relies on "
                                   "expires, by role (ca, ra, registration_point, trusted_signer)",
                                   labels=["role", "subject", "serial"])
        for role, cert in services.certificates:
            days = (cert.not_valid_after_utc - now).total_seconds() / 86400
            expiry.add_metric([role, cert.subject.rfc4514_string(), format(cert.serial_number, "x")], days)
        yield expiry
        yield from self._from_store(services, now)
        ocsp_age = getattr(services.ocsp, "oldest_response_at", None)  # the OCSP responder's hook
        if callable(ocsp_age) and ocsp_age() is not None:
            yield GaugeMetricFamily("scepd_ocsp_response_age_seconds", "Age of the oldest OCSP response served "
                                    "from the cache", value=(now - ocsp_age()).total_seconds())

    def _from_store(self, services, now):
        store = services.store
        up = GaugeMetricFamily("scepd_store_up", "Whether the database answered this scrape's queries")
        try:
            depth, oldest = store.delivery_backlog()
            crls = [(ca, store.latest_crl(ca.key_id)) for ca in services.scep.authorities.all_cas]
        except Exception as exc:  # noqa: BLE001 - a scrape says the store is down, it does not fail
            log.warning("metrics: the store did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("scepd_notification_queue_depth", "Notification deliveries still owed "
                                "(neither delivered nor given up)", value=depth)
        yield GaugeMetricFamily("scepd_notification_oldest_due_seconds", "How long the oldest owed delivery "
                                "has been due (0: none)", value=max((now - oldest).total_seconds(), 0) if oldest else 0)
        age = GaugeMetricFamily("scepd_crl_age_seconds", "Time since the CA's current CRL was signed", labels=["ca"])
        left = GaugeMetricFamily("scepd_crl_next_update_seconds", "Time until the CA's current CRL's nextUpdate",
                                 labels=["ca"])
        for ca, crl in crls:
            if crl is not None:
                age.add_metric([ca.key_id], (now - crl.this_update).total_seconds())
                left.add_metric([ca.key_id], (crl.next_update - now).total_seconds())
        yield age
        yield left


class MetricsEndpoint:
    """The scrape's answer, for the route on the main port and for the separate listener."""

    def __init__(self, services: Callable, token_sha256: Callable[[], str]) -> None:
        self._services = services
        self._token_sha256 = token_sha256
        self._scrape_time = CollectorRegistry(auto_describe=False)
        self._scrape_time.register(_ScrapeTime(services))

    def answer(self, authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for a scrape presenting `authorization`."""
        wanted = self._token_sha256().lower()
        if wanted:
            scheme, _, token = (authorization or "").partition(" ")
            digest = hashlib.sha256(token.strip().encode()).hexdigest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(digest, wanted):
                return 401, {"WWW-Authenticate": 'Bearer realm="metrics"', "Content-Type": "text/plain"}, \
                    b"401 Unauthorized: /metrics needs the bearer token of [server] metrics_token_sha256\n"
        if metrics.multiprocess():
            counted = CollectorRegistry()
            multiprocess.MultiProcessCollector(counted)
        else:
            counted = REGISTRY
        body = generate_latest(counted) + generate_latest(self._scrape_time)
        return 200, {"Content-Type": CONTENT_TYPE}, body

    def route(self, in_thread):
        async def scrape(request: Request) -> Response:
            status, headers, body = await in_thread(self.answer, request.headers.get("authorization"))
            return Response(body, status_code=status, headers=headers)

        return scrape


# A scraper sends one short request and reads the answer: a connection that has not done so
# within LISTENER_TIMEOUT seconds (in all, not per read) is closed, and at most LISTENER_CONNECTIONS are served at
# once (each a thread); one more is closed unanswered. Without both, a few hundred sockets
# that send a byte now and then (slowloris) would each hold a thread for ever.
LISTENER_TIMEOUT = 10.0
LISTENER_CONNECTIONS = 16


class _ReusePortServer(http.server.ThreadingHTTPServer):
    """Every worker listens on metrics_port (the kernel spreads the scrapes); any of them
    answers with the sum of all. At most `connections` at once."""

    daemon_threads = True
    connections = LISTENER_CONNECTIONS

    def server_bind(self) -> None:
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
        self._slots = threading.BoundedSemaphore(self.connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsListener:
    """/metrics alone on `[server] metrics_port`, in a thread of each worker: plain HTTP,
    `timeout` seconds for a request, `connections` at once."""

    def __init__(self, endpoint: MetricsEndpoint, host: str, port: int, *, timeout: float = LISTENER_TIMEOUT,
                 connections: int = LISTENER_CONNECTIONS) -> None:
        self._endpoint, self._address = endpoint, (host, port)
        self._timeout, self._connections = timeout, connections
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._address[1]

    def start(self) -> None:
        endpoint = self._endpoint
        limit = self._timeout

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = limit  # each read's and write's

            def handle(self) -> None:
                # And the connection's in all: a byte every few seconds resets a read's timeout.
                deadline = threading.Timer(limit, self._cut)
                deadline.start()
                try:
                    super().handle()
                finally:
                    deadline.cancel()

            def _cut(self) -> None:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                if self.path.split("?")[0] != "/metrics":
                    status, headers, body = 404, {"Content-Type": "text/plain"}, b"404 Not Found: only /metrics here\n"
                else:
                    status, headers, body = endpoint.answer(self.headers.get("Authorization"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not logged line by line
                pass

        family = socket.AF_INET6 if ":" in self._address[0] else socket.AF_INET
        server_class = type("MetricsServer", (_ReusePortServer,), {"address_family": family,
                                                                   "connections": self._connections})
        self._server = server_class(self._address, Handler)
        threading.Thread(target=self._server.serve_forever, name="scepd-metrics", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
