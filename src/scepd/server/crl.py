"""GET /crl/{key_id}.crl: the current CRL of one of our CAs, for relying parties."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.serialization import Encoding
from starlette.requests import Request
from starlette.responses import Response

from scepd.protocol.errors import Refusal
from scepd.server.framing import bug_refusal, log_refused, refusal_text, retry_after


class CrlRoute:
    """`services()` is the current services object; `in_thread(function, *args)` runs the
    CRL's reading (and maybe signing and storing) off the event loop, since it waits for the
    database, so that GetCACaps and GetCACert meanwhile answer at once."""

    def __init__(self, services: Callable, in_thread) -> None:
        self._services = services
        self._in_thread = in_thread

    async def handle(self, request: Request) -> Response:
        services = self._services()
        try:
            crl = await self._in_thread(services.scep.crl_for, request.path_params["key_id"].lower())
        except Exception:
            return refusal_text(bug_refusal(request))
        if isinstance(crl, Refusal):
            # Relying parties fetch CRLs as plain HTTP clients: 503 with Retry-After is theirs.
            response = refusal_text(crl, headers=retry_after(services.store.busy_timeout))
            log_refused("crl request", request.scope, response, crl)
            return response
        if crl is None:
            return Response("no CA with that key identifier\n", status_code=404, media_type="text/plain")
        return Response(crl.public_bytes(Encoding.DER), media_type="application/pkix-crl")
