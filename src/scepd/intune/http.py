"""HTTPS to Entra ID, Graph and Intune: one httpx client per trust configuration, and
answers read as JSON within a size and time budget."""

from __future__ import annotations

import ssl
import threading
import time

import httpx

from scepd import peerjson
from scepd.challenge.remote import UnreadableAnswer, read_bounded

# Microsoft's answers are a few KiB (Graph's endpoint list is the largest); whatever answers
# is not trusted to stop on its own.
MAX_ANSWER_BYTES = 262144


class IntuneUnavailable(Exception):
    """No usable answer: no connection, a non-2xx status, or something that is not JSON.
    `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


_clients: dict[str, httpx.Client] = {}
_clients_lock = threading.Lock()


def client_for(ca_bundle: str) -> httpx.Client:
    """The process's client for these calls: the system's roots plus `ca_bundle` (PEM) when
    given. Shared so that connections to Microsoft are kept alive across enrollments."""
    with _clients_lock:
        client = _clients.get(ca_bundle)
        if client is None:
            context = ssl.create_default_context()
            if ca_bundle:
                try:
                    context.load_verify_locations(cafile=ca_bundle)
                except (OSError, ssl.SSLError) as exc:
                    raise IntuneUnavailable(f"[intune] ca_bundle {ca_bundle} cannot be read as PEM roots: {exc}") from None
            client = _clients[ca_bundle] = httpx.Client(verify=context, follow_redirects=False)
        return client


def call_json(client: httpx.Client, method: str, url: str, *, timeout: float, headers: dict | None = None,
              **content) -> object:
    """The JSON answer of a 2xx; IntuneUnavailable otherwise (with the status of a non-2xx,
    and the start of its body, which names Entra's and Intune's errors)."""
    deadline = time.monotonic() + timeout
    # identity: read as sent, so that the size limit is the size in memory.
    headers = {**(headers or {}), "Accept-Encoding": "identity", "Accept": "application/json"}
    try:
        with client.stream(method, url, headers=headers, timeout=timeout, **content) as response:
            body = read_bounded(response, deadline, timeout, MAX_ANSWER_BYTES)
            status = response.status_code
    except UnreadableAnswer as exc:
        raise IntuneUnavailable(f"{url}: {exc}") from None
    except httpx.HTTPError as exc:
        raise IntuneUnavailable(f"{url} cannot be reached: {exc}") from None
    if status // 100 != 2:
        excerpt = bytes(body[:200]).decode("utf-8", "replace").strip()
        raise IntuneUnavailable(f"{url} answered HTTP {status}" + (f": {excerpt}" if excerpt else ""), status)
    try:
        return peerjson.loads(bytes(body), max_bytes=MAX_ANSWER_BYTES)
    except ValueError as exc:
        raise IntuneUnavailable(f"{url} answered something that is not JSON: {exc}") from None
