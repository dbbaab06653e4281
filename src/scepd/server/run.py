"""Running the ASGI app under uvicorn, one process or several sharing one socket."""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.supervisors import Multiprocess


def serve(host: str, port: int, workers: int, max_request_bytes: int) -> None:
    """Serve `create_app_from_environment` (it reads SCEPD_DIR) until interrupted."""
    config = uvicorn.Config(
        "scepd.server.app:create_app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        # h11 even where httptools is installed (uvicorn would prefer it): httptools refuses
        # a query string over about 64 KiB with a bare 400, before our 414 with a reason.
        http="h11",
        # Our own limits answer 413/414 with a reason; h11's must not cut in first.
        h11_max_incomplete_event_size=max(1 << 20, 4 * max_request_bytes),
    )
    if workers <= 1:
        uvicorn.Server(config).run()
        return
    sock = config.bind_socket()
    # The shared socket uvicorn binds for its workers has no protocol number, so asyncio does
    # not set TCP_NODELAY on the connections it accepts, and each response then waits ~40 ms
    # for the client's delayed ACK (measured: 16/s instead of 70/s with one client). Linux
    # hands the listening socket's TCP_NODELAY down to every accepted connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Multiprocess(config, sockets=[sock]).run()
