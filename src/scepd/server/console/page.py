"""What every console page shares: the request as a view sees it (`Call`), the templates
(Jinja2 with autoescaping on: subjects, transaction IDs and log lines come from peers) and
the headers every answer carries."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from jinja2 import Environment, PackageLoader
from starlette.requests import Request
from starlette.responses import HTMLResponse

from scepd.protocol.errors import Refusal
from scepd.service.accounts import Accounts, SignedIn
from scepd.wiring import ConsoleFacts, Services, console_facts

log = logging.getLogger("scepd.console")
TEMPLATES = Environment(loader=PackageLoader("scepd.server.console", "templates"), autoescape=True,
                        trim_blocks=True, lstrip_blocks=True)
SECURITY_HEADERS = {
    # No script runs in the console, and no page of it may be framed (clickjacking).
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class Call:
    """One request as a view sees it."""

    request: Request
    form: dict
    services: Services
    accounts: Accounts
    session: SignedIn | None

    @property
    def address(self) -> str | None:
        return self.request.client.host if self.request.client else None

    def arg(self, name: str, default: str = "") -> str:
        source = self.form if self.request.method == "POST" else self.request.query_params
        return str(source.get(name, default))[:512]

    def facts(self) -> ConsoleFacts:
        return console_facts(self.services)


def render(call: Call | None, template: str, status: int = 200, **values) -> HTMLResponse:
    session = call.session if call else None
    page = TEMPLATES.get_template(template).render(session=session, path=call.request.url.path if call else "", **values)
    return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)


def refused(call: Call | None, refusal: Refusal) -> HTMLResponse:
    return render(call, "refused.html", status=refusal.http_status, refusal=refusal)
