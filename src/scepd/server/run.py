"""Running the ASGI app under uvicorn, one process or several sharing its sockets, with the
connection handling a server facing the internet needs and uvicorn lacks (ScepdH11Protocol),
and HTTPS beside an optional plain-HTTP port (ScepdServer)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import Multiprocess, multiprocess

from scepd.protocol.errors import ErrorCode, Refusal
from scepd.server.app import create_app_for_directory
from scepd.server.metrics import metrics_for_workers
from scepd.server.tls import ContextReloader, TlsFiles, server_context

log = logging.getLogger("scepd.server")

DEFAULT_HEADER_TIMEOUT = 10.0  # as [server] header_timeout

# A lingering close (as Apache's and nginx's): once an answer has been sent before the
# request's body was read, the connection is half-closed and what the client still sends is
# read and dropped until it stops, for at most these bounds, and only then closed.
LINGER_SECONDS = 10.0  # in all
LINGER_IDLE_SECONDS = 2.0  # without anything arriving: the client has read the answer
LINGER_BYTES = 64 << 20  # dropped in all (a 20 MB body reads in well under a second locally)


class _ClosingTransport:
    """The connection's transport as uvicorn's protocol sees it, except that close() is
    decided by ScepdH11Protocol (it may linger) and is_closing() is true from then on."""

    def __init__(self, transport: asyncio.Transport, protocol: "ScepdH11Protocol") -> None:
        self._transport = transport
        self._protocol = protocol
        self._closing = False

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._protocol._close_or_linger(self._transport)

    def close_now(self) -> None:
        self._closing = True
        self._transport.close()


class ScepdH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two things it does not do (measured with uvicorn 0.54):

    - A header timeout. uvicorn arms its keep-alive timer only after a response and cancels
      it on any data, and nothing at all while a connection's first request arrives: a raw
      socket that sent "GET /scep" and then nothing was still open after 20 s, so a few
      thousand such sockets (slowloris) would hold the server's descriptors. Here a
      connection that has not completed a request's headers `header_timeout` seconds after it
      opened, or after the previous response, is closed.
    - A lingering close. When uvicorn closes a connection whose request body is still
      arriving (our 413 answered from Content-Length, with `Connection: close` or a client's
      own), the kernel answers the unread data with a reset, which can destroy the answer
      before the client reads it: the client sees "connection reset" instead of the 413. Here
      such a close half-closes (the answer, then FIN), drops what arrives within the LINGER_
      bounds, and then closes. An answer given before the body was read also ends the
      connection this way rather than reading on for as long as the client sends.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timeout = getattr(self.config, "scepd_header_timeout", DEFAULT_HEADER_TIMEOUT)
        self._header_timer: asyncio.TimerHandle | None = None
        self._lingering: list[asyncio.TimerHandle] | None = None  # its deadline and idle timers
        self._dropped = 0
        self._socket_transport = transport
        super().connection_made(_ClosingTransport(transport, self))  # type: ignore[arg-type]
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._drop(data)
            return
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.transport.close()  # answered before the body was read: linger, then close
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """What h11 cannot parse (a bad request line, headers over the size limit, broken
        chunks, conflicting Content-Lengths): the refusal in scepd's words, with its code."""
        refusal = Refusal(ErrorCode.REQUEST_MALFORMED, f"the request is not valid HTTP/1.1 ({msg.rstrip('.')})")
        super().send_400_response(refusal.http_text)

    # --- the header timeout -------------------------------------------------------------------

    def _watch_headers(self) -> None:
        """Armed while the connection owes us a request's headers (h11: the client IDLE)."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout, self._headers_overdue)
        elif not waiting and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        partial = len(self.conn.trailing_data[0])
        if partial:  # an idle keep-alive connection is ordinary; a stalled request is not
            log.warning("closed a connection from %s that sent %d bytes but no complete request header in %g s",
                        self.client[0] if self.client else "?", partial, self._header_timeout)
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close_now()  # type: ignore[attr-defined]  (no lingering: no answer is owed)

    # --- the lingering close ------------------------------------------------------------------

    def _close_or_linger(self, transport: asyncio.Transport) -> None:
        """uvicorn closes the connection: at once, unless the client may still be sending."""
        if transport.is_closing() or self.conn.their_state not in (h11.SEND_BODY, h11.ERROR):
            transport.close()
            return
        if transport.can_write_eof():
            try:
                transport.write_eof()  # sent once the answer is: the client can read it to its end
            except OSError:  # the client hung up already (ENOTCONN): nobody is left to linger for
                transport.close()
                return
        transport.resume_reading()  # uvicorn pauses reading while a body waits unread
        self._lingering = [self.loop.call_later(LINGER_SECONDS, transport.close),
                           self.loop.call_later(LINGER_IDLE_SECONDS, transport.close)]

    def _drop(self, data: bytes) -> None:
        self._dropped += len(data)
        if self._dropped > LINGER_BYTES:
            self._socket_transport.close()
            return
        self._lingering[1].cancel()
        self._lingering[1] = self.loop.call_later(LINGER_IDLE_SECONDS, self._socket_transport.close)

    def _cancel_timers(self) -> None:
        for timer in [self._header_timer, *(self._lingering or ())]:
            if timer is not None:
                timer.cancel()
        self._header_timer = None


class ScepdServer(uvicorn.Server):
    """uvicorn's server, serving HTTPS on its port and plain HTTP on the ports in
    `config.scepd_plain_ports` (uvicorn 0.54 gives every socket the one `config.ssl`), with the
    certificate re-read when its files change (`config.scepd_tls`, looked at every 2 s).

    The TLS handshake must end within the header timeout, as the request's headers must
    after it: a client that connects and says nothing is not held for asyncio's 60 s."""

    _reloader: ContextReloader | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        tls: TlsFiles | None = getattr(config, "scepd_tls", None)
        if tls is None or sockets is None:
            await super().startup(sockets)
            return
        try:
            context = server_context(tls)
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot serve HTTPS: %s and %s do not load (%s)", tls.certificate, tls.key, exc)
            sys.exit(STARTUP_FAILURE)
        self._reloader = ContextReloader(context, tls)
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(config=config, server_state=self.server_state,
                                              app_state=self.lifespan.state, _loop=_loop)

        loop = asyncio.get_running_loop()
        plain_ports = getattr(config, "scepd_plain_ports", frozenset())
        handshake = getattr(config, "scepd_header_timeout", DEFAULT_HEADER_TIMEOUT)
        self.servers = []
        for sock in sockets:
            plain = sock.getsockname()[1] in plain_ports
            self.servers.append(await loop.create_server(
                create_protocol, sock=sock, backlog=config.backlog, ssl=None if plain else context,
                ssl_handshake_timeout=None if plain else handshake))
        self.started = True

    async def on_tick(self, counter: int) -> bool:
        if self._reloader is not None and counter % 20 == 0:
            try:
                self._reloader.check()
            except Exception:  # noqa: BLE001 - a reload must never end the serve loop
                log.exception("the TLS files were not reloaded")
        return await super().on_tick(counter)


def pin_to_cpu(cpus: list[int] | None, index: int) -> None:
    """Pin this process's thread, and the threads it starts from now on, to the CPU of worker
    `index` ([server] cpu_affinity): its event loop and its enrollment threads then share one
    core's caches instead of passing Python's objects between two."""
    if not cpus:
        return
    cpu = cpus[index % len(cpus)]
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # a CPU this process may not use: served unpinned, and said so
        log.warning("worker %d not pinned to CPU %d: %s", index, cpu, exc)


class _ScepdProcess(multiprocess.Process):
    """A worker process that runs ScepdServer instead of uvicorn's Server, on its CPU when
    the workers are pinned (`config.scepd_cpus`): worker N (in the order they are started,
    a restarted one taking the next number) on the Nth CPU of the list, in turn."""

    _started = itertools.count()

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.index = next(self._started)  # in the supervisor; travels to the worker with the object
        super().__init__(config, sockets)

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # in the worker
        pin_to_cpu(getattr(self.config, "scepd_cpus", None), self.index)
        super().target(sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = ScepdServer(config=self.config)
        return self._server


def _run_workers(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """uvicorn's supervisor (restarts, signals, health checks) with ScepdServer workers. It
    makes its workers from the module's `Process` and offers no other way to choose their
    server, hence the swap for as long as it runs."""
    original = multiprocess.Process
    multiprocess.Process = _ScepdProcess
    try:
        Multiprocess(config, sockets=sockets).run()
    finally:
        multiprocess.Process = original


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket as uvicorn binds one for its workers (inherited by them), with
    TCP_NODELAY, which accepted connections inherit (see serve)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(directory: Path, *, host: str, port: int, workers: int, max_request_bytes: int,
          header_timeout: float = DEFAULT_HEADER_TIMEOUT, overrides: Mapping[str, str] | None = None,
          tls: TlsFiles | None = None, http_port: int = 0, cpus: list[int] | None = None) -> None:
    """Serve the instance in `directory` until interrupted. Each worker process builds its own
    app from the directory (`create_app_for_directory`): the factory is a picklable partial,
    because it travels in the Config, which is what uvicorn sends to the processes it spawns.
    `header_timeout`: seconds a connection has to send a request's headers; `overrides`:
    SCEPD_* settings every worker applies over scepd.toml (the address served, --db), handed
    over in the factory rather than through this process's environment. `tls`: serve HTTPS
    on `port` with these files, and plain HTTP on `http_port` when it is not 0; every
    worker serves both. `cpus`: each worker pinned to one of these in turn ([server]
    cpu_affinity); None: not pinned."""
    config = uvicorn.Config(
        functools.partial(create_app_for_directory, Path(directory), dict(overrides or {})),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        # h11 (ours, see ScepdH11Protocol) even where httptools is installed (uvicorn would
        # prefer it): httptools refuses a query string over about 64 KiB with a bare 400,
        # before our 414 with a reason.
        http=ScepdH11Protocol,
        # Our own limits answer 413/414 with a reason; h11's must not cut in first.
        h11_max_incomplete_event_size=max(1 << 20, 4 * max_request_bytes),
    )
    # Read by each connection's protocol; an attribute of the Config, because the Config is
    # what reaches every worker process.
    config.scepd_header_timeout = header_timeout
    config.scepd_cpus = cpus
    if workers <= 1:
        pin_to_cpu(cpus, 0)  # before the app and its threads start: they inherit it
    if tls is not None:
        config.scepd_tls = tls
        sockets = [_bind(host, port)] + ([_bind(host, http_port)] if http_port else [])
        config.scepd_plain_ports = frozenset(s.getsockname()[1] for s in sockets[1:])
        if workers <= 1:
            ScepdServer(config).run(sockets=sockets)
        else:
            with metrics_for_workers(directory):  # the workers count into one directory
                _run_workers(config, sockets)
        return
    if workers <= 1:
        uvicorn.Server(config).run()
        return
    sock = config.bind_socket()
    # The shared socket uvicorn binds for its workers has no protocol number, so asyncio does
    # not set TCP_NODELAY on the connections it accepts, and each response then waits ~40 ms
    # for the client's delayed ACK (measured: 16/s instead of 70/s with one client). Linux
    # hands the listening socket's TCP_NODELAY down to every accepted connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with metrics_for_workers(directory):  # the workers count into one directory
        _run_workers(config, [sock])
