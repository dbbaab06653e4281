"""The ASGI application: SCEP over HTTP GET and POST (RFC 8894 section 4)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, unquote_plus

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scepd import peerjson
from scepd.challenge.mdm import ExpectedRequest, issue_local_challenge
from scepd.enrollment import NEXT_CA_CERT, EnrollmentService, OperationResult
from scepd.errors import ErrorCode, Refusal
from scepd.registry.config import ConfigError, parse_duration
from scepd.registry.instance import InstanceError
from scepd.registry.rp import token_accepted
from scepd.store import StoreUnavailable

request_log = logging.getLogger("scepd.request")

SCEP_PATHS = (
    "/scep",
    "/scep/pkiclient.exe",
    "/certsrv/mscep/mscep.dll",
    "/certsrv/mscep/mscep.dll/pkiclient.exe",
)


class _TooLarge(Exception):
    pass


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


# Sent with an answer given before the request's body was read (413, a framing refusal): the
# connection cannot carry another request, and the server (server/run.py) reads and drops
# what the client still sends for a while before closing, so that the client gets to read
# this answer instead of a reset.
CLOSE = {"Connection": "close"}


def _text(status: int, refusal: Refusal, headers: dict | None = None) -> Response:
    return Response(refusal.http_text, status_code=status, media_type="text/plain; charset=utf-8", headers=headers)


def _api_refusal(status: int, code: ErrorCode, reason: str, headers: dict | None = None) -> JSONResponse:
    """An HTTP API refusal, in the shape of Intune's answers."""
    return JSONResponse({"code": code.value, "errorDescription": reason}, status, headers=headers)


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
                request_log.warning("request refused", extra={"fields": {
                    "client": scope["client"][0] if scope.get("client") else None, "method": scope["method"],
                    "path": scope["path"], "http_status": 400, "code": refusal.code.value, "reason": refusal.reason}})
                await _text(400, refusal, CLOSE)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class ReloadingService:
    """The service, rebuilt when the files it was built from change.

    `scepd ca activate-next` and `scepd ra renew` write new key files and then scepd.toml;
    `scepd doctor --fix` re-creates the registration point's files. Each worker notices within
    `interval` seconds (a few stats, never a per-request read) and switches without a
    restart. A configuration that does not load is logged and the running service is kept.
    """

    def __init__(self, build, watched, interval: float = 2.0) -> None:
        self._build = build
        self._watched = watched  # () -> the paths to watch, from the current configuration
        self._interval = interval
        self._service: EnrollmentService = build()
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

    def __call__(self) -> EnrollmentService:
        if time.monotonic() - self._checked >= self._interval:
            self._checked = time.monotonic()
            stamp = self._fingerprint()
            if stamp != self._stamp:
                try:
                    self._service = self._build()
                    self._stamp = self._fingerprint()
                    logging.getLogger("scepd.server").warning("configuration or key files changed: reloaded")
                except Exception:
                    self._stamp = stamp
                    logging.getLogger("scepd.server").exception("kept the running configuration: the new one does not load")
        return self._service


def create_app(service, max_request_bytes: int, *, threads: int, background=None) -> Starlette:
    """`service` is an EnrollmentService, or a callable returning the current one;
    `threads` is the number of threads that run enrollments (the configuration decides it:
    `Config.enrollment_threads`); `background` (the notification dispatcher) runs while the
    app does."""
    current = service if callable(service) else (lambda: service)
    # Enrollments run on threads of their own, so that a remote registration point's answer
    # or a database server's commit never stalls the event loop. A plain executor, not
    # anyio's to_thread: each hand-over costs less than half the CPU (measured 48 against
    # 123 us with 8 callers), and this pool is the app's own.
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scepd-enroll")

    async def in_thread(function, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    async def scep(request: Request) -> Response:
        started = time.perf_counter()
        fields = {
            "client": request.client.host if request.client else None,
            "method": request.method,
            "path": request.url.path,
        }
        try:
            response, result = await _dispatch(request, fields)
        except Exception:
            # A bug, not the client's fault; still an answer with a reason, never a traceback.
            logging.getLogger("scepd.server").exception("bug while answering %s %s", request.method, request.url.path)
            refusal = Refusal(ErrorCode.INTERNAL_ERROR, "the server failed to process the request")
            fields["code"] = refusal.code.value
            response, result = _text(400, refusal), None
        fields["http_status"] = response.status_code
        if result is not None:
            fields.update(
                transaction_id=result.transaction_id,
                message_type=result.message_type,
                status=result.status,
                serial=result.serial,
                **result.details,
            )
            if result.refusal:
                fields.update(
                    code=result.refusal.code.value,
                    fail_info=result.refusal.fail_info.rfc_name,
                    reason=result.refusal.reason,
                    remedy=result.refusal.remedy,
                )
        fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
        failed = response.status_code >= 400 or (result is not None and result.refusal is not None)
        request_log.log(logging.WARNING if failed else logging.INFO, "scep request", extra={"fields": fields})
        return response

    async def _dispatch(request: Request, fields: dict) -> tuple[Response, OperationResult | None]:
        service = current()
        raw_query = request.scope.get("query_string", b"")
        if len(raw_query) > max_request_bytes:
            refusal = Refusal(ErrorCode.REQUEST_TOO_LARGE, f"the query string exceeds {max_request_bytes} bytes")
            fields["code"] = refusal.code.value
            return _text(414, refusal), None
        params = parse_query(raw_query)
        operation = params.get("operation", "")
        fields["operation"] = operation
        if operation == "GetCACaps":
            return Response(service.ca_caps, media_type="text/plain"), None
        if operation == "GetCACert":
            # `message` (Apple: profile name, Cisco: trustpoint) names a CA; we have one.
            content_type, body = service.ca_certs
            return Response(body, media_type=content_type), None
        if operation == "GetNextCACert":
            if service.next_ca_certs is None:
                refusal = Refusal(ErrorCode.NO_NEXT_CA, "there is no next CA (no rollover in progress)")
                fields["code"] = refusal.code.value
                return _text(404, refusal), None
            return Response(service.next_ca_certs, media_type=NEXT_CA_CERT), None
        if operation != "PKIOperation":
            refusal = Refusal(ErrorCode.OPERATION_UNKNOWN, f"unknown operation {operation!r}")
            fields["code"] = refusal.code.value
            return _text(400, refusal), None

        try:
            if request.method == "POST":
                message = await _read_body(request, max_request_bytes)
                if message and message[:1] != b"\x30":
                    # Not DER (which starts with a SEQUENCE): some clients POST base64.
                    message = decode_base64_message(message.decode("ascii"))
            else:
                text = params.get("message")
                if not text:
                    raise _NoMessage("no message parameter")
                message = decode_base64_message(text)
        except _TooLarge:
            refusal = Refusal(ErrorCode.REQUEST_TOO_LARGE, f"the body exceeds {max_request_bytes} bytes")
            fields["code"] = refusal.code.value
            return _text(413, refusal, CLOSE), None
        except ClientDisconnect:
            return Response(status_code=400), None
        except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
            code = ErrorCode.MESSAGE_MISSING if isinstance(exc, _NoMessage) else ErrorCode.MESSAGE_UNDECODABLE
            refusal = Refusal(code, f"the message cannot be read: {exc}")
            fields["code"] = refusal.code.value
            return _text(400, refusal), None
        if not message:
            refusal = Refusal(ErrorCode.MESSAGE_MISSING, "the request has no message")
            fields["code"] = refusal.code.value
            return _text(400, refusal), None
        result = await in_thread(service.pki_operation, message, fields["client"])
        return Response(result.body, status_code=result.http_status, media_type=result.content_type), result

    async def health(_request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def crl(request: Request) -> Response:
        service = current()
        ca = service.ca_for_key_id(request.path_params["key_id"].lower())
        if ca is None:
            return Response("no CA with that key identifier\n", status_code=404, media_type="text/plain")
        try:
            # Reading (and maybe signing and storing) the CRL waits for the database: on the
            # executor, so that GetCACaps and GetCACert meanwhile answer at once.
            der = (await in_thread(service.crls.current, ca)).public_bytes(Encoding.DER)
        except StoreUnavailable as exc:
            # Relying parties fetch CRLs as plain HTTP clients: 503 with Retry-After is theirs.
            refusal = Refusal(ErrorCode.STORE_UNAVAILABLE, f"the CRL cannot be read or re-signed now: {exc.reason}")
            request_log.warning("crl request", extra={"fields": {
                "client": request.client.host if request.client else None, "path": request.url.path,
                "http_status": 503, "code": refusal.code.value, "reason": refusal.reason}})
            retry_after = str(max(1, math.ceil(service.store.busy_timeout)))
            return Response(refusal.http_text, status_code=503, media_type="text/plain; charset=utf-8",
                            headers={"Retry-After": retry_after})
        return Response(der, media_type="application/pkix-crl")

    def _authorized(request: Request, service) -> Response | None:
        tokens = service.instance.config.registration_point.api_tokens if service.instance else ()
        if not tokens:
            return _api_refusal(403, ErrorCode.API_UNAUTHORIZED, "no API token is configured: scepd registry token new")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token_accepted(token.strip(), tokens):
            return _api_refusal(401, ErrorCode.API_UNAUTHORIZED, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        return None

    async def _api_request(request: Request):
        """(service, JSON body, None) for an authorised API call, else (None, None, the answer)."""
        service = current()
        denied = _authorized(request, service)
        if denied:
            return None, None, denied
        try:
            body = await _read_body(request, max_request_bytes)
        except _TooLarge:
            return None, None, _api_refusal(413, ErrorCode.REQUEST_TOO_LARGE, f"the body exceeds {max_request_bytes} bytes", CLOSE)
        except ClientDisconnect:
            return None, None, Response(status_code=400)
        try:
            return service, peerjson.loads(body, max_bytes=max_request_bytes), None
        except peerjson.JsonRefused as exc:
            return None, None, _api_refusal(400, ErrorCode.REQUEST_MALFORMED, str(exc))
        except ValueError as exc:  # malformed JSON, text that is not UTF-8
            return None, None, _api_refusal(400, ErrorCode.REQUEST_MALFORMED, f"the body is not JSON: {exc}")

    def _api_route(handler):
        """An API handler whose unexpected failure is still a named answer, never a 500."""
        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except StoreUnavailable as exc:
                return _api_refusal(503, ErrorCode.STORE_UNAVAILABLE, exc.reason)
            except Exception:
                logging.getLogger("scepd.server").exception("bug while answering %s %s", request.method, request.url.path)
                return _api_refusal(400, ErrorCode.INTERNAL_ERROR, "the server failed to process the request")
        return route

    async def api_challenges(request: Request) -> Response:
        """POST /api/v1/challenges: the MDM side issues a challenge for one enrollment."""
        service, body, answer = await _api_request(request)
        if answer:
            return answer
        try:
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            validity = body.pop("validity", None)
            if validity is not None and not isinstance(validity, str):
                raise ValueError("validity must be a duration such as \"10m\"")
            expected = ExpectedRequest.from_claim(body)
            if expected.subject:
                x509.Name.from_rfc4514_string(expected.subject)
            lifetime = parse_duration(validity) if validity else None
            challenge, claims = issue_local_challenge(service.instance, expected, lifetime)
        except (ValueError, ConfigError) as exc:
            return _api_refusal(400, ErrorCode.REQUEST_MALFORMED, str(exc))
        except InstanceError as exc:
            return JSONResponse({"code": ErrorCode.REGISTRATION_POINT_KEY_MISSING.value, "errorDescription": str(exc)}, 503)
        base = service.instance.config.server.base_url
        return JSONResponse({"challenge": challenge, "scep_url": f"{base}/scep", "jti": claims["jti"],
                             "expires_at": dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc).isoformat()}, 201)

    async def scep_actions(request: Request) -> Response:
        """Intune's SCEP validation API: validateRequest, successNotification, failureNotification."""
        service, body, answer = await _api_request(request)
        if answer:
            return answer
        action = request.path_params["action"]
        try:
            if action == "validateRequest":
                item = body["request"]
                csr_der = base64.b64decode(item["certificateRequest"], validate=True)
                code, description = await in_thread(service.validate_request, str(item["transactionId"]), csr_der)
                return JSONResponse({"code": code, "errorDescription": description})
            if action in ("successNotification", "failureNotification"):
                item = body["notification"]
                if not isinstance(item, dict):
                    raise TypeError("notification must be an object")
                await in_thread(service.record_received, action.removesuffix("Notification"), item)
                return JSONResponse({"code": "Success", "errorDescription": ""})
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            return _api_refusal(400, ErrorCode.REQUEST_MALFORMED, f"malformed {action} body: {exc}")
        return _api_refusal(404, ErrorCode.API_ACTION_UNKNOWN, f"no action {action}")

    routes = [Route(path, scep, methods=["GET", "POST"]) for path in SCEP_PATHS]
    routes.append(Route("/api/v1/challenges", _api_route(api_challenges), methods=["POST"]))
    routes.append(Route("/ScepActions/{action}", _api_route(scep_actions), methods=["POST"]))
    routes.append(Route("/healthz", health, methods=["GET"]))
    routes.append(Route("/crl/{key_id}.crl", crl, methods=["GET"]))
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


def create_app_from_environment() -> Starlette:
    """The uvicorn factory used by `scepd serve` (each worker process builds its own app:
    keys loaded once per process, one database pool per process)."""
    from scepd.enrollment import remote_token
    from scepd.logs import configure
    from scepd.notifications import Dispatcher
    from scepd.registry.config import CONFIG_FILE
    from scepd.registry.instance import Instance, load_key_material

    directory = Path(os.environ["SCEPD_DIR"])
    instance = Instance.open(directory)
    log_file = instance.path(instance.config.logging.file) if instance.config.logging.file else None
    configure(log_file)
    store = instance.open_store()

    tokens: dict[tuple, object] = {}

    def token_for(current_instance):
        """One bearer token per remote-token setting in this process, kept across reloads,
        so that an OAuth2 token is fetched once and reused until it expires."""
        c = current_instance.config.challenge
        key = (c.remote_token, c.token_url, c.client_id, c.client_secret, c.scope)
        return tokens.setdefault(key, remote_token(current_instance))

    def build() -> EnrollmentService:
        fresh = Instance.open(directory)
        return EnrollmentService.from_instance(fresh, load_key_material(fresh), store, token_for(fresh))

    def watched() -> list[Path]:
        rp = Instance.open(directory).config.registration_point
        names = [rp.encryption_certificate, rp.encryption_key, *rp.trusted_signers]
        return [directory / CONFIG_FILE, *(directory / n for n in names)]

    service = ReloadingService(build, watched)
    dispatcher = Dispatcher(
        store,
        hmac_secret=instance.config.notifications.hmac_secret,
        max_attempts=instance.config.notifications.max_attempts,
        tokens={instance.config.challenge.remote_url: token_for(instance)} if instance.config.challenge.remote_url else {},
    )
    return create_app(service, instance.config.server.max_request_bytes, background=dispatcher,
                      threads=instance.config.enrollment_threads)


__all__ = ["create_app", "create_app_from_environment"]
