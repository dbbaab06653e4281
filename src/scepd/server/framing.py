"""What every route shares below its own logic: requests refused for their framing before any
route sees them, bodies read within the size limit, refusals written as plain text, and the
fields of a request's log line."""

from __future__ import annotations

import asyncio
import logging
import math
import sys

from starlette.requests import Request
from starlette.responses import Response

from scepd.protocol.errors import ErrorCode, KeyUnavailable, Refusal

request_log = logging.getLogger("scepd.request")

# Sent with an answer given before the request's body was read (413, a framing refusal): the
# connection cannot carry another request, and the server (server/run.py) reads and drops
# what the client still sends for a while before closing, so that the client gets to read
# this answer instead of a reset.
CLOSE = {"Connection": "close"}

TEXT = "text/plain; charset=utf-8"


class BodyRefused(Exception):
    """The body is not read: `code` says why (the error table gives its HTTP status)."""

    code = ErrorCode.REQUEST_MALFORMED


class BodyTooLarge(BodyRefused):
    """The body exceeds the limit, as declared by Content-Length or counted as it arrived."""

    code = ErrorCode.REQUEST_TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body exceeds {limit} bytes")


class BodyTooSlow(BodyRefused):
    """The body did not arrive in time after the headers."""

    code = ErrorCode.REQUEST_TIMEOUT

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the body did not arrive within {timeout:g} s of the headers")


def refusal_text(refusal: Refusal, status: int | None = None, headers: dict | None = None) -> Response:
    """A refusal as plain text (its failInfoText and remedy), with the error table's HTTP
    status unless the answer has one of its own."""
    return Response(refusal.http_text, status_code=status or refusal.http_status, media_type=TEXT, headers=headers)


def retry_after(busy_timeout: float) -> dict:
    """The Retry-After header of a 503 for a store that did not answer in time: ask again
    once a busy_timeout has passed."""
    return {"Retry-After": str(max(1, math.ceil(busy_timeout)))}


def request_fields(scope) -> dict:
    """What every log line says of the request it is about."""
    client = scope.get("client")
    return {"client": client[0] if client else None, "method": scope["method"], "path": scope["path"]}


def bug_refusal(request: Request) -> Refusal:
    """What a request that met a bug is answered with (a reason, never a traceback); the
    traceback goes to the log. A key whose token is gone is no bug: KeyUnavailable (503)."""
    raised = sys.exc_info()[1]
    if isinstance(raised, KeyUnavailable):
        return Refusal(ErrorCode.KEY_UNAVAILABLE, raised.reason)
    logging.getLogger("scepd.server").exception("bug while answering %s %s", request.method, request.url.path)
    return Refusal(ErrorCode.INTERNAL_ERROR, "the server failed to process the request")


def log_refused(event: str, scope, response: Response, refusal: Refusal) -> None:
    """The log line of a request refused outside a route's own logging."""
    request_log.warning(event, extra={"fields": {
        **request_fields(scope), "http_status": response.status_code, "code": refusal.code.value, "reason": refusal.reason}})


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The body, refused (BodyTooLarge) as soon as it is known to exceed `limit`: from
    Content-Length before any of it is read, else as it arrives; and (BodyTooSlow) when it has
    not all arrived `timeout` seconds after the headers. The header timeout (server/run.py)
    ends there: without this, a client that sends its headers and then a byte a minute holds
    a connection and a task for as long as it likes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    if timeout is None:
        return await collect()
    try:
        # A deadline on this task (no task of its own per request, as wait_for would make).
        async with asyncio.timeout(timeout):
            return await collect()
    except TimeoutError:
        raise BodyTooSlow(timeout) from None


class RequestFraming:
    """Refuses a request that carries both Content-Length and Transfer-Encoding, before any
    route sees it. h11 frames such a request by Transfer-Encoding alone, as RFC 9112 6.3
    allows, but a proxy in front may have framed it by Content-Length: the bytes after the
    body would then be another request to one of us and part of this body to the other
    (request smuggling). RFC 9112 6.3: the connection must be closed after answering."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                refusal = Refusal(ErrorCode.REQUEST_MALFORMED,
                                  "the request has both Content-Length and Transfer-Encoding (RFC 9112 6.3)")
                response = refusal_text(refusal, headers=CLOSE)
                log_refused("request refused", scope, response, refusal)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
