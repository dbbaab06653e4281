"""The console's pages and actions, and `console_routes`, which app.py mounts at /admin.

Each endpoint checks the transport first, reads a bounded urlencoded form for a POST, then
runs its view on the console's own small thread pool (sessions, Argon2 and the store all
wait; a flood of sign-ins must not hold the threads enrollments run on): the view finds the
session (none: a GET is sent to the sign-in page, a POST refused with 403),
checks a POST's CSRF token and the role, and renders a template. Views call the services
only: the administration for actions, the accounts for sessions, activity for what the
records and the log say. An outage (the database, an HSM's key) is a page with its code
and 503, never a bare 500."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from scepd.protocol.errors import ErrorCode, Refusal
from scepd.server.console import sessions as s
from scepd.server.console import views as v
from scepd.server.console.page import Call, FactsCache, headers, log, redirect, refused
from scepd.server.framing import BodyTooLarge, read_body
from scepd.service.accounts import Accounts
from scepd.service.admin import outage
from scepd.wiring import Services

STATIC = Path(__file__).parent / "static"
MAX_FORM_BYTES = 16 * 1024


class Console:
    """The endpoints, over the services `current()` returns."""

    def __init__(self, current, in_thread) -> None:
        self._current = current
        self._in_thread = in_thread
        self._accounts: tuple[object, Accounts] | None = None
        self._cache = FactsCache()

    def accounts(self, services: Services) -> Accounts:
        # One per store: the services are rebuilt when files change, the store is kept.
        if self._accounts is None or self._accounts[0] is not services.store:
            self._accounts = (services.store, Accounts(services.store, audit=services.admin.audit))
        return self._accounts[1]

    def endpoint(self, view, *, public: bool = False, operator: bool = False):
        async def handle(request: Request) -> Response:
            refusal = s.transport_refusal(request)
            if refusal is not None:
                return refused(None, refusal)
            form = {}
            if request.method == "POST":
                try:
                    form = dict(parse_qsl((await read_body(request, MAX_FORM_BYTES)).decode("utf-8", "replace"),
                                          keep_blank_values=True, max_num_fields=20))
                except (BodyTooLarge, ValueError):
                    return HTMLResponse("the form is too large\n", status_code=413, headers=headers(request))
            return await self._in_thread(self._run, view, request, form, public, operator)

        return handle

    def _run(self, view, request: Request, form: dict, public: bool, operator: bool) -> Response:
        call = None
        try:
            services = self._current()
            accounts = self.accounts(services)
            call = Call(request, form, services, accounts, s.signed_in(request, accounts), self._cache)
            return self._checked(view, call, public, operator)
        except Exception as exc:
            refusal = outage(exc)
            if refusal is None:
                raise  # a bug: the server's handler logs it
        log.warning("console page unavailable", extra={"fields": {"path": request.url.path, "code": refusal.code.value,
                                                                   "reason": refusal.reason}})
        return refused(call, refusal)

    def _checked(self, view, call: Call, public: bool, operator: bool) -> Response:
        request, form = call.request, call.form
        if not public:
            if call.session is None:
                if request.method == "POST":
                    return refused(call, Refusal(ErrorCode.SESSION_REQUIRED, "sign in first"))
                return redirect(call, f"{s.PATH}/login?next={quote(request.url.path)}")
            if request.method == "POST":
                refusal = s.action_refusal(call.session, form, operator)
                if refusal is not None:
                    log.warning("console refused", extra={"fields": {"account": call.session.account, "client": call.address,
                                                                      "path": request.url.path, "code": refusal.code.value}})
                    return refused(call, refusal)
        return view(call)


def console_routes(current, in_thread) -> list:
    """`in_thread(function, *args)`: runs a view on the console's thread pool (app.py's)."""
    c = Console(current, in_thread)
    get, post = ["GET"], ["POST"]
    return [
        Route("/", c.endpoint(v.overview), methods=get),
        Route("/login", c.endpoint(v.login_form, public=True), methods=get),
        Route("/login", c.endpoint(v.login, public=True), methods=post),
        Route("/logout", c.endpoint(v.logout), methods=post),
        Route("/otp", c.endpoint(v.otp_page), methods=get),
        Route("/otp", c.endpoint(v.otp_new, operator=True), methods=post),
        Route("/requests", c.endpoint(v.pending), methods=get),
        Route("/requests/approve", c.endpoint(v.approve, operator=True), methods=post),
        Route("/requests/deny", c.endpoint(v.deny, operator=True), methods=post),
        Route("/certs", c.endpoint(v.certificates), methods=get),
        Route("/certs/{serial}", c.endpoint(v.certificate), methods=get),
        Route("/certs/{serial}/pem", c.endpoint(v.certificate_pem), methods=get),
        Route("/certs/{serial}/revoke", c.endpoint(v.revoke, operator=True), methods=post),
        Route("/log", c.endpoint(v.request_log), methods=get),
        Route("/audit", c.endpoint(v.audit_trail), methods=get),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

