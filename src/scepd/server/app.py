"""The ASGI application: the routes (server/scep.py, api.py, crl.py) assembled with the
request framing check, the thread pool that runs what waits, the notification dispatcher's
lifetime, and the services rebuilt when their files change."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from scepd.server.aia import CaIssuersRoute
from scepd.server.api import ApiRoutes
from scepd.server.console import console_routes
from scepd.server.crl import CrlRoute
from scepd.server.framing import RequestFraming
from scepd.server.metrics import MetricsEndpoint, MetricsListener, worker_exited
from scepd.server.ocsp import OCSP_PATHS, OcspRoute
from scepd.server.scep import SCEP_PATHS, ScepRoute
from scepd.server.threads import WorkerThreads
from scepd.server.tls import PlainHttpGuard

log = logging.getLogger("scepd.server")
CONSOLE_THREADS = 4  # the console's pages and sign-ins (at most accounts.MAX_VERIFYING verifying)


class ReloadingServices:
    """The services, rebuilt when the files they were built from change.

    `scepd ca activate-next` and `scepd ra renew` write new key files and then scepd.toml;
    `scepd doctor --fix` re-creates the registration point's files. Each worker notices within
    `interval` seconds (a few stats, never a per-request read) and switches without a
    restart. A configuration that does not load is logged and the running services are kept.
    """

    def __init__(self, build, watched, interval: float = 2.0) -> None:
        self._build = build
        self._watched = watched  # () -> the paths to watch, from the current configuration
        self._interval = interval
        self._services = build()
        self._stamp = self._fingerprint()
        self._checked = time.monotonic()

    def _fingerprint(self) -> tuple:
        try:
            paths = self._watched()
        except Exception:  # an unreadable configuration: its rebuild will say why
            paths = []
        stamps = []
        for path in paths:
            try:
                stamps.append((str(path), path.stat().st_mtime_ns))
            except OSError:
                stamps.append((str(path), None))  # a file that vanished is a change too
        return tuple(stamps)

    def __call__(self):
        if time.monotonic() - self._checked >= self._interval:
            self._checked = time.monotonic()
            stamp = self._fingerprint()
            if stamp != self._stamp:
                try:
                    self._services = self._build()
                    self._stamp = self._fingerprint()
                    log.warning("configuration or key files changed: reloaded")
                except Exception:
                    self._stamp = stamp
                    log.exception("kept the running configuration: the new one does not load")
        return self._services


async def health(_request: Request) -> Response:
    return Response("ok\n", media_type="text/plain")


def create_app(services, max_request_bytes: int, *, threads: int, background=None,
               plain_http: Middleware | None = None, body_timeout: float | None = None) -> Starlette:
    """`services` is a `scepd.wiring.Services`, or a callable returning the current one;
    `threads` is the number of threads that run enrollments (the configuration decides it:
    `Config.enrollment_threads`); `background` (the notification dispatcher, the Intune
    revocation loop) runs while the app does; `plain_http` (a PlainHttpGuard) limits the
    plain-HTTP port beside HTTPS to what may travel in clear; `body_timeout`: the seconds a
    request's body has after its headers ([server] header_timeout)."""
    current = services if callable(services) else (lambda: services)
    # Enrollments run on threads of their own, so that a remote registration point's answer
    # or a database server's commit never stalls the event loop (see server/threads.py for
    # why not anyio's to_thread or asyncio's executor: the cost of each hand-over).
    enrollment_threads = WorkerThreads(threads, "scepd-enroll")
    # The console's own few threads: its sign-ins (an Argon2 verify, ~0.2 s of CPU and 64 MiB
    # each) come from anyone who reaches /admin/login, and must not hold the threads above.
    console_threads = WorkerThreads(CONSOLE_THREADS, "scepd-console")
    in_thread, in_console_thread = enrollment_threads.run, console_threads.run

    scep = ScepRoute(current, max_request_bytes, in_thread, body_timeout)
    api = ApiRoutes(current, max_request_bytes, in_thread, body_timeout)
    routes = [Route(path, scep.handle, methods=["GET", "POST"]) for path in SCEP_PATHS]
    routes.append(Route("/api/v1/challenges", api.challenges, methods=["POST"]))
    routes.append(Route("/ScepActions/{action}", api.scep_actions, methods=["POST"]))
    routes.append(Route("/healthz", health, methods=["GET"]))
    metrics_listener = _metrics(current, in_thread, routes)
    routes.append(Route("/crl/{key_id}.crl", CrlRoute(current, in_thread).handle, methods=["GET"]))
    ocsp = OcspRoute(current, max_request_bytes, in_thread)
    routes += [Route(path, ocsp.handle, methods=["GET", "POST"]) for path in OCSP_PATHS]
    routes.append(Route("/ca/{key_id}.crt", CaIssuersRoute(current).handle, methods=["GET"]))
    routes.append(Mount("/admin", routes=console_routes(current, in_console_thread)))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if background is not None:
            background.start()
        if metrics_listener is not None:
            metrics_listener.start()
        try:
            yield
        finally:
            if metrics_listener is not None:
                metrics_listener.stop()
            if background is not None:
                background.stop()
            enrollment_threads.shutdown()
            console_threads.shutdown()
            worker_exited()

    # The guard first: what the plain port refuses is not framed, read or logged as a request.
    middleware = ([plain_http] if plain_http else []) + [Middleware(RequestFraming)]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


def _metrics(current, in_thread, routes: list) -> MetricsListener | None:
    """/metrics as `[server] metrics_port` says: a route of `routes` (0), a listener of its
    own to start with the app (a port), nowhere (-1)."""
    server = getattr(getattr(current(), "instance", None), "config", None)
    server = server.server if server is not None else None
    port = server.metrics_port if server is not None else 0
    endpoint = MetricsEndpoint(current, lambda: current().instance.config.server.metrics_token_sha256
                               if server is not None else "")
    if port == 0:
        routes.append(Route("/metrics", endpoint.route(in_thread), methods=["GET"]))
    return MetricsListener(endpoint, server.host, port) if port > 0 else None


def create_app_for_directory(directory: Path, overrides: Mapping[str, str] | None = None) -> Starlette:
    """The app `scepd serve` runs for the instance in `directory` (each worker process builds
    its own: keys loaded once per process, one database pool per process), with the
    configuration `overrides` it was started with."""
    from scepd.logs import configure
    from scepd.wiring import ServedInstance

    served = ServedInstance(directory, overrides)
    configure(served.log_file)
    config = served.instance.config
    server = config.server
    plain_http = None
    if server.tls_enabled and server.http_port:
        https_base = server.public_url.rstrip("/") if server.public_url.startswith("https://") else ""
        plain_http = Middleware(PlainHttpGuard, plain_port=server.http_port, https_port=server.port, https_base=https_base)
    return create_app(ReloadingServices(served.build, served.watched), server.max_request_bytes,
                      background=served.background(), threads=config.enrollment_threads, plain_http=plain_http,
                      body_timeout=server.header_timeout_seconds)


__all__ = ["ReloadingServices", "create_app", "create_app_for_directory"]
