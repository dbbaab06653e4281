"""OCSP over HTTP (RFC 6960 appendix A.1): POST /ocsp with an application/ocsp-request body,
GET /ocsp/{base64 of the request, URL-encoded}; the answer is application/ocsp-response.

What the request means is the responder's to say (`Services.ocsp`): every request it cannot
read gets an OCSP malformedRequest with HTTP 200, as the RFC has it, so a relying party sees
an OCSP answer and never a 500; a body over the size limit gets the same with 413.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import time
from collections.abc import Callable
from email.utils import format_datetime

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from scepd.server.framing import (
    CLOSE,
    BodyTooLarge,
    read_body,
    request_fields,
    request_log,
)
from scepd.server.scep import decode_base64_message

OCSP_RESPONSE = "application/ocsp-response"
OCSP_PATHS = ("/ocsp", "/ocsp/{request:path}")

log = logging.getLogger("scepd.server")


class OcspRoute:
    """`services()` is the current services object; `in_thread(function, *args)` runs the
    responder (a database read and maybe a signature) off the event loop."""

    def __init__(self, services: Callable, max_request_bytes: int, in_thread) -> None:
        self._services = services
        self._limit = max_request_bytes
        self._in_thread = in_thread

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        fields = request_fields(request.scope)
        responder = self._services().ocsp
        if responder is None:
            return Response("no OCSP responder here\n", status_code=404, media_type="text/plain")
        status, headers = 200, {}
        try:
            der = await self._request(request)
        except BodyTooLarge:
            der, status, headers = None, 413, dict(CLOSE)
        except ClientDisconnect:
            return Response(status_code=400)
        except (ValueError, UnicodeDecodeError, binascii.Error):
            der = None
        try:
            answer = responder.malformed if der is None else await self._in_thread(responder.respond, der)
        except Exception:  # a bug: the relying party still gets an OCSP answer
            log.exception("bug while answering %s %s", request.method, request.url.path)
            answer = responder.internal_error
        if request.method == "GET" and answer.next_update is not None:
            headers.update(_cache_headers(answer))
        fields.update(http_status=status, ocsp_status=answer.status, serial=answer.serial, cached=answer.cached,
                      duration_ms=round((time.perf_counter() - started) * 1000, 2))
        level = logging.INFO if answer.status in ("good", "revoked", "unknown") else logging.WARNING
        request_log.log(level, "ocsp request", extra={"fields": fields})
        return Response(answer.der, status_code=status, media_type=OCSP_RESPONSE, headers=headers)

    async def _request(self, request: Request) -> bytes:
        """The OCSPRequest: a POST's body, or what follows /ocsp/ in a GET's path (Starlette
        has percent-decoded it; the base64 quirks of scep.py apply)."""
        if request.method == "POST":
            return await read_body(request, self._limit)
        text = request.path_params.get("request", "")
        if len(text) > self._limit:
            raise BodyTooLarge(self._limit)
        return decode_base64_message(text)


def _cache_headers(answer) -> dict[str, str]:
    """RFC 5019 6.2: an HTTP cache may keep a GET's answer until its nextUpdate."""
    produced = answer.this_update
    max_age = max(0, int((answer.next_update - produced).total_seconds() - (time.time() - produced.timestamp())))
    return {
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
        "Last-Modified": format_datetime(produced, usegmt=True),
        "Expires": format_datetime(answer.next_update, usegmt=True),
        "ETag": f'"{hashlib.sha1(answer.der).hexdigest()}"',
    }
