"""GET /ca/{key_id}.crt: the certificate of one of our CAs (DER), the caIssuers location that
issued certificates name in their Authority Information Access extension."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.serialization import Encoding
from starlette.requests import Request
from starlette.responses import Response


class CaIssuersRoute:
    """`services()` is the current services object. Answered on the event loop: the
    certificates are in memory."""

    def __init__(self, services: Callable) -> None:
        self._services = services

    async def handle(self, request: Request) -> Response:
        ca = self._services().scep.authorities.ca_for_key_id(request.path_params["key_id"].lower())
        if ca is None:
            return Response("no CA with that key identifier\n", status_code=404, media_type="text/plain")
        return Response(ca.certificate.public_bytes(Encoding.DER), media_type="application/pkix-cert")
