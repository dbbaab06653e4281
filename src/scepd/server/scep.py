"""SCEP over HTTP GET and POST (RFC 8894 section 4): the operation from the query string,
the message from the body or the query (with the base64 quirks of real clients), the size
limits, and one log line per request. What the message means is the SCEP service's to say."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable
from urllib.parse import unquote, unquote_plus

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from scepd import metrics
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.server.framing import (
    CLOSE,
    BodyRefused,
    bug_refusal,
    read_body,
    refusal_text,
    request_fields,
    request_log,
)
from scepd.service.outcome import NEXT_CA_CERT, OperationResult

SCEP_PATHS = (
    "/scep",
    "/scep/pkiclient.exe",
    "/certsrv/mscep/mscep.dll",
    "/certsrv/mscep/mscep.dll/pkiclient.exe",
)


class _NoMessage(ValueError):
    """PKIOperation without a message (as opposed to one that is not base64)."""


def parse_query(raw: bytes) -> dict[str, str]:
    """Query parameters, keeping `+` in values literal.

    Apple and Cisco send the base64 `message` unescaped, so a `+` there is part of the
    base64, not a space: values are percent-decoded but never plus-decoded.
    """
    params: dict[str, str] = {}
    for part in raw.decode("latin-1").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params.setdefault(unquote_plus(name), unquote(value))
    return params


def decode_base64_message(text: str) -> bytes:
    """Base64 as clients really send it: with line breaks (%0A), with a space where something
    on the way plus-decoded a `+`, in the URL-safe alphabet, or without padding."""
    cleaned = text.replace(" ", "+")
    cleaned = "".join(cleaned.split())  # the line breaks
    if not cleaned:
        raise _NoMessage("empty message")
    cleaned = cleaned.replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned, validate=True)


Answer = tuple[Response, OperationResult | None]


class ScepRoute:
    """The SCEP paths. `services()` is the current services object (it may be reloaded);
    `in_thread(function, *args)` runs a PKIOperation off the event loop."""

    def __init__(self, services: Callable, max_request_bytes: int, in_thread, body_timeout: float | None = None) -> None:
        self._services = services
        self._limit = max_request_bytes
        self._in_thread = in_thread
        self._body_timeout = body_timeout  # seconds a body has after its headers; None: no limit

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        fields = request_fields(request.scope)
        metrics.IN_PROGRESS.inc()
        try:
            response, result = await self._dispatch(request, fields)
        except Exception:  # a bug, not the client's fault
            response, result = _refused(fields, bug_refusal(request))
        finally:
            metrics.IN_PROGRESS.dec()
        fields["http_status"] = response.status_code
        if result is not None:
            fields.update(_result_fields(result))
        seconds = time.perf_counter() - started
        fields["duration_ms"] = round(seconds * 1000, 2)
        failed = response.status_code >= 400 or (result is not None and result.refusal is not None)
        # Here and only here: the one place that knows every operation's outcome and code.
        status = fields.get("status") if result is not None else None
        metrics.count_request(metrics.operation_label(fields.get("operation", ""), fields.get("message_type")),
                              status.lower() if status else ("failure" if failed else "success"),
                              fields.get("code") or "", seconds)
        request_log.log(logging.WARNING if failed else logging.INFO, "scep request", extra={"fields": fields})
        return response

    async def _dispatch(self, request: Request, fields: dict) -> Answer:
        scep = self._services().scep
        raw_query = request.scope.get("query_string", b"")
        if len(raw_query) > self._limit:
            return _refused(fields, Refusal(ErrorCode.REQUEST_TOO_LARGE, f"the query string exceeds {self._limit} bytes"),
                            status=414)
        params = parse_query(raw_query)
        operation = params.get("operation", "")
        fields["operation"] = operation
        if operation == "GetCACaps":
            return Response(scep.ca_caps, media_type="text/plain"), None
        if operation == "GetCACert":
            # `message` (Apple: profile name, Cisco: trustpoint) names a CA; we have one.
            content_type, body = scep.ca_certs
            return Response(body, media_type=content_type), None
        if operation == "GetNextCACert":
            if scep.next_ca_certs is None:
                return _refused(fields, Refusal(ErrorCode.NO_NEXT_CA, "there is no next CA (no rollover in progress)"))
            return Response(scep.next_ca_certs, media_type=NEXT_CA_CERT), None
        if operation != "PKIOperation":
            return _refused(fields, Refusal(ErrorCode.OPERATION_UNKNOWN, f"unknown operation {operation!r}"))
        return await self._pki_operation(request, params, fields, scep)

    async def _pki_operation(self, request: Request, params: dict[str, str], fields: dict, scep) -> Answer:
        try:
            message = await self._message(request, params)
        except BodyRefused as exc:
            return _refused(fields, Refusal(exc.code, str(exc)), headers=CLOSE)
        except ClientDisconnect:
            return Response(status_code=400), None
        except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
            code = ErrorCode.MESSAGE_MISSING if isinstance(exc, _NoMessage) else ErrorCode.MESSAGE_UNDECODABLE
            return _refused(fields, Refusal(code, f"the message cannot be read: {exc}"))
        if not message:
            return _refused(fields, Refusal(ErrorCode.MESSAGE_MISSING, "the request has no message"))
        result = await self._in_thread(scep.pki_operation, message, fields["client"])
        return Response(result.body, status_code=result.http_status, media_type=result.content_type), result

    async def _message(self, request: Request, params: dict[str, str]) -> bytes:
        """The pkiMessage: the body of a POST, the `message` parameter of a GET."""
        if request.method == "POST":
            message = await read_body(request, self._limit, self._body_timeout)
            if message and message[:1] != b"\x30":
                # Not DER (which starts with a SEQUENCE): some clients POST base64.
                message = decode_base64_message(message.decode("ascii"))
            return message
        text = params.get("message")
        if not text:
            raise _NoMessage("no message parameter")
        return decode_base64_message(text)


def _refused(fields: dict, refusal: Refusal, status: int | None = None, headers: dict | None = None) -> Answer:
    fields["code"] = refusal.code.value
    return refusal_text(refusal, status, headers), None


def _result_fields(result: OperationResult) -> dict:
    fields = dict(transaction_id=result.transaction_id, message_type=result.message_type, status=result.status,
                  serial=result.serial, **result.details)
    if result.refusal:
        fields.update(code=result.refusal.code.value, fail_info=result.refusal.fail_info.rfc_name,
                      reason=result.refusal.reason, remedy=result.refusal.remedy)
    return fields
