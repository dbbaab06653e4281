"""The ASGI application: the routes (server/scep.py, api.py, crl.py) assembled with the
request framing check, the thread pool that runs what waits, the notification dispatcher's
lifetime, and the services rebuilt when their files change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from scepd.server.api import ApiRoutes
from scepd.server.crl import CrlRoute
from scepd.server.framing import RequestFraming
from scepd.server.scep import SCEP_PATHS, ScepRoute

log = logging.getLogger("scepd.server")


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


def create_app(services, max_request_bytes: int, *, threads: int, background=None) -> Starlette:
    """`services` is a `scepd.wiring.Services`, or a callable returning the current one;
    `threads` is the number of threads that run enrollments (the configuration decides it:
    `Config.enrollment_threads`); `background` (the notification dispatcher, the Intune
    revocation loop) runs while the app does."""
    current = services if callable(services) else (lambda: services)
    # Enrollments run on threads of their own, so that a remote registration point's answer
    # or a database server's commit never stalls the event loop. A plain executor, not
    # anyio's to_thread: each hand-over costs less than half the CPU (measured 48 against
    # 123 us with 8 callers), and this pool is the app's own.
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scepd-enroll")

    async def in_thread(function, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    scep = ScepRoute(current, max_request_bytes, in_thread)
    api = ApiRoutes(current, max_request_bytes, in_thread)
    routes = [Route(path, scep.handle, methods=["GET", "POST"]) for path in SCEP_PATHS]
    routes.append(Route("/api/v1/challenges", api.challenges, methods=["POST"]))
    routes.append(Route("/ScepActions/{action}", api.scep_actions, methods=["POST"]))
    routes.append(Route("/healthz", health, methods=["GET"]))
    routes.append(Route("/crl/{key_id}.crl", CrlRoute(current, in_thread).handle, methods=["GET"]))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if background is not None:
            background.start()
        try:
            yield
        finally:
            if background is not None:
                background.stop()
            executor.shutdown(wait=True)

    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(RequestFraming)])


def create_app_for_directory(directory: Path, overrides: Mapping[str, str] | None = None) -> Starlette:
    """The app `scepd serve` runs for the instance in `directory` (each worker process builds
    its own: keys loaded once per process, one database pool per process), with the
    configuration `overrides` it was started with."""
    from scepd.logs import configure
    from scepd.wiring import ServedInstance

    served = ServedInstance(directory, overrides)
    configure(served.log_file)
    config = served.instance.config
    return create_app(ReloadingServices(served.build, served.watched), config.server.max_request_bytes,
                      background=served.background(), threads=config.enrollment_threads)


__all__ = ["ReloadingServices", "create_app", "create_app_for_directory"]
