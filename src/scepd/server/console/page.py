"""What every console page shares: the request as a view sees it (`Call`), the templates
(Jinja2 with autoescaping on: subjects, transaction IDs and log lines come from peers), the
headers every answer carries (redirects too), and what the pages show of the instance
(`FactsCache`: built once per set of services, doctor's findings at most once a minute)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from jinja2 import Environment, PackageLoader
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

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
# Over HTTPS only (RFC 6797 8.1: a browser ignores it over HTTP): the browser goes on asking
# for the console over HTTPS, so that a sign-in is never sent in clear after a downgrade.
HSTS = {"Strict-Transport-Security": "max-age=31536000"}
DOCTOR_FOR = 60.0  # seconds doctor's findings are shown before it runs again


def headers(request: Request | None) -> dict[str, str]:
    return {**SECURITY_HEADERS, **HSTS} if request is not None and request.url.scheme == "https" else SECURITY_HEADERS


class FactsCache:
    """What the pages show of the instance. `console_facts` loads the registration point's
    files, and doctor loads every key and asks the database and the HSM: done for each page,
    a few viewers would keep the HSM and the disk busy. The facts are kept for as long as the
    services are (they are rebuilt when the files change), doctor's findings `DOCTOR_FOR`."""

    def __init__(self, monotonic=time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._doctor_lock = threading.Lock()
        self._facts: tuple[object, ConsoleFacts] | None = None
        self._findings: tuple[object, float, list] | None = None

    def facts(self, services: Services) -> ConsoleFacts:
        with self._lock:
            if self._facts is None or self._facts[0] is not services:
                self._facts = (services, console_facts(services))
            return self._facts[1]

    def findings(self, services: Services) -> list:
        """Doctor's results that are not a pass, as of at most DOCTOR_FOR seconds ago."""
        facts = self.facts(services)
        with self._doctor_lock:  # one doctor at a time: the others wait for its findings
            cached = self._findings
            if cached is None or cached[0] is not services or self._monotonic() - cached[1] >= DOCTOR_FOR:
                cached = (services, self._monotonic(), [r for r in facts.doctor() if r.status != "PASS"])
                self._findings = cached
            return cached[2]


@dataclass(frozen=True)
class Call:
    """One request as a view sees it."""

    request: Request
    form: dict
    services: Services
    accounts: Accounts
    session: SignedIn | None
    cache: FactsCache

    @property
    def address(self) -> str | None:
        return self.request.client.host if self.request.client else None

    def arg(self, name: str, default: str = "") -> str:
        source = self.form if self.request.method == "POST" else self.request.query_params
        return str(source.get(name, default))[:512]

    def facts(self) -> ConsoleFacts:
        return self.cache.facts(self.services)

    def findings(self) -> list:
        return self.cache.findings(self.services)


def render(call: Call | None, template: str, status: int = 200, **values) -> HTMLResponse:
    session = call.session if call else None
    page = TEMPLATES.get_template(template).render(session=session, path=call.request.url.path if call else "", **values)
    return HTMLResponse(page, status_code=status, headers=headers(call.request if call else None))


def redirect(call: Call | Request, to: str) -> RedirectResponse:
    request = call.request if isinstance(call, Call) else call
    return RedirectResponse(to, status_code=303, headers=headers(request))


def refused(call: Call | None, refusal: Refusal) -> HTMLResponse:
    return render(call, "refused.html", status=refusal.http_status, refusal=refusal)
