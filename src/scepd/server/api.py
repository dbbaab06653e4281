"""The registration point's JSON APIs over HTTP: POST /api/v1/challenges and Intune's
/ScepActions/{action}. Here: bearer tokens read from the header, bodies read within the size
limit and parsed as hostile JSON, answers in the shape of Intune's ({code, errorDescription}).
What a request is owed is `RegistrationPointApi`'s (service/rp_api.py) to decide."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from scepd import peerjson
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.server.framing import CLOSE, BodyRefused, bug_refusal, read_body, retry_after
from scepd.service.admin import Actor

log = logging.getLogger("scepd.server")

SUCCESS = {"code": "Success", "errorDescription": ""}


def intune_answer(refusal: Refusal | None) -> dict:
    """A verdict as Intune writes one."""
    return dict(SUCCESS) if refusal is None else {"code": refusal.code.value, "errorDescription": refusal.reason}


def api_refusal(refusal: Refusal, status: int | None = None, headers: dict | None = None) -> JSONResponse:
    """A refusal in Intune's shape, with the error table's HTTP status unless given."""
    return JSONResponse(intune_answer(refusal), status or refusal.http_status, headers=headers)


class ApiRoutes:
    """`services()` is the current services object (its `rp_api` answers); `in_thread`
    runs the service's calls, which read files and wait for the database, off the event loop."""

    def __init__(self, services: Callable, max_request_bytes: int, in_thread, body_timeout: float | None = None) -> None:
        self._services = services
        self._limit = max_request_bytes
        self._in_thread = in_thread
        self._body_timeout = body_timeout  # seconds a body has after its headers; None: no limit

    async def challenges(self, request: Request) -> Response:
        """POST /api/v1/challenges: the MDM side issues a challenge for one enrollment."""
        return await self._answer(request, self._challenges)

    async def scep_actions(self, request: Request) -> Response:
        """Intune's SCEP validation API: validateRequest, successNotification, failureNotification."""
        return await self._answer(request, self._scep_action)

    async def _answer(self, request: Request, handler) -> Response:
        """An authorised call's answer. The service answers an expected fault (the store
        unavailable) with a refusal; a bug is still a named answer, never a 500."""
        try:
            api = self._services().rp_api
            refused = _unauthorized(api, request.headers.get("authorization"))
            if refused:
                return refused
            body = await self._body(request)
            if isinstance(body, Response):
                return body
            return await handler(request, api, body)
        except Exception:
            return api_refusal(bug_refusal(request))

    async def _body(self, request: Request):
        """The JSON body, or the answer refusing it."""
        try:
            raw = await read_body(request, self._limit, self._body_timeout)
        except BodyRefused as exc:
            return api_refusal(Refusal(exc.code, str(exc)), headers=CLOSE)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            return peerjson.loads(raw, max_bytes=self._limit)
        except peerjson.JsonRefused as exc:
            return api_refusal(Refusal(ErrorCode.REQUEST_MALFORMED, str(exc)))
        except ValueError as exc:  # malformed JSON, text that is not UTF-8
            return api_refusal(Refusal(ErrorCode.REQUEST_MALFORMED, f"the body is not JSON: {exc}"))

    async def _audit(self, request: Request, action: str, target: str, refusal: Refusal | None) -> None:
        """The call in the audit trail, by the token it presented (its ID) and the peer."""
        actor = Actor.api(request.headers.get("authorization"), request.client.host if request.client else None)
        try:
            await self._in_thread(self._services().admin.audit.record, actor, action, target, refusal)
        except Exception:  # the call is answered; the trail's own failure is a bug to log
            log.exception("could not record %s in the audit trail", action)

    def _refused(self, refusal: Refusal) -> JSONResponse:
        """A refusal; one for a store that did not answer says when to ask again."""
        if refusal.code is ErrorCode.STORE_UNAVAILABLE:
            return api_refusal(refusal, headers=retry_after(self._services().store.busy_timeout))
        return api_refusal(refusal)

    async def _challenges(self, request: Request, api, body) -> Response:
        answer = await self._in_thread(api.issue_challenge, body)
        if isinstance(answer, Refusal):
            await self._audit(request, "challenge.issue", "", answer)
            return self._refused(answer)
        await self._audit(request, "challenge.issue", f"jti {answer.get('jti')}", None)
        return JSONResponse(answer, 201)

    async def _scep_action(self, request: Request, api, body) -> Response:
        action = request.path_params["action"]
        try:
            if action == "validateRequest":
                item = body["request"]
                csr_der = base64.b64decode(item["certificateRequest"], validate=True)
                refusal = await self._in_thread(api.validate_request, str(item["transactionId"]), csr_der)
                await self._audit(request, "scep_action.validateRequest", str(item["transactionId"]), refusal)
                if refusal is not None and refusal.code is ErrorCode.STORE_UNAVAILABLE:
                    return self._refused(refusal)  # not a verdict: the caller should ask again later
                return JSONResponse(intune_answer(refusal))
            if action in ("successNotification", "failureNotification"):
                item = body["notification"]
                if not isinstance(item, dict):
                    raise TypeError("notification must be an object")
                refusal = await self._in_thread(api.record_received, action.removesuffix("Notification"), item)
                await self._audit(request, f"scep_action.{action}", str(item.get("transactionId", "")), refusal)
                return self._refused(refusal) if refusal else JSONResponse(SUCCESS)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            return api_refusal(Refusal(ErrorCode.REQUEST_MALFORMED, f"malformed {action} body: {exc}"))
        return api_refusal(Refusal(ErrorCode.API_ACTION_UNKNOWN, f"no action {action}"))


def _unauthorized(api, authorization: str | None) -> Response | None:
    refusal = api.authorize(authorization)
    if refusal is None:
        return None
    if not api.has_tokens:
        # No token could be right: the API is switched off (Forbidden), there is nothing to
        # authenticate with (no WWW-Authenticate).
        return api_refusal(refusal, 403)
    return api_refusal(refusal, headers={"WWW-Authenticate": "Bearer"})
