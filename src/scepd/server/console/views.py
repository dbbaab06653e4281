"""The console's views: each takes the request as a `Call` (session checked already, a POST's
CSRF token and role too) and renders a template from what the services answer."""

from __future__ import annotations

import datetime as dt
import re

from starlette.responses import Response

from scepd.protocol.errors import ErrorCode, Refusal
from scepd.server.console import sessions as s
from scepd.server.console.chart import chart
from scepd.server.console.page import Call, headers, log, redirect, refused, render
from scepd.service import activity
from scepd.service.admin import REVOCATION_REASONS, Actor

EXPIRY_WARNING = dt.timedelta(days=30)


def actor(call: Call) -> Actor:
    return Actor(kind="console", name=call.session.account, address=call.address or "")


def _now(call: Call) -> dt.datetime:
    return call.services.admin.clock.now()


# --- sign-in -----------------------------------------------------------------------------------


def _next(value: str) -> str:
    """Where to go after signing in: a console path, never another site (//host, /\\host)."""
    return value if re.fullmatch(r"/admin/[A-Za-z0-9/_.-]*", value or "") and "//" not in value else "/admin/"


def login_form(call: Call, error: Refusal | None = None, status: int = 200) -> Response:
    if call.session is not None and error is None:
        return redirect(call, _next(call.arg("next")))
    token = s.new_login_token()
    response = render(call, "login.html", status=status, login_token=token, next=_next(call.arg("next")), error=error,
                      name=call.arg("name"))
    s.set_cookie(response, s.LOGIN_COOKIE, token, max_age=3600)
    return response


def login(call: Call) -> Response:
    if not s.login_token_matches(call.request, call.form):
        return login_form(call, Refusal(ErrorCode.CSRF_TOKEN_INVALID, "the sign-in form expired: sign in again"), 403)
    result = call.accounts.sign_in(call.arg("name"), call.form.get("password", ""), call.address)
    fields = {"account": call.arg("name")[:64], "client": call.address}
    if isinstance(result, Refusal):
        log.warning("console sign-in refused", extra={"fields": {**fields, "code": result.code.value}})
        return login_form(call, result, result.http_status)
    session_id, _signed_in = result
    log.info("console sign-in", extra={"fields": fields})
    response = redirect(call, _next(call.arg("next")))
    s.set_cookie(response, s.SESSION_COOKIE, session_id)
    s.clear_cookie(response, s.LOGIN_COOKIE)
    return response


def logout(call: Call) -> Response:
    call.accounts.sign_out(call.session, call.address)
    response = redirect(call, f"{s.PATH}/login")
    s.clear_cookie(response, s.SESSION_COOKIE)
    return response


# --- overview ----------------------------------------------------------------------------------


def overview(call: Call) -> Response:
    facts, now = call.facts(), _now(call)
    hours = activity.hourly(facts.log_file, now)
    certificates = [(role, cert, (cert.not_valid_after_utc - now).days) for role, cert in facts.certificates]
    try:
        findings = call.findings()
    except Exception:  # doctor reports what it can; a page must not fail with it
        log.exception("doctor failed on the console's overview")
        findings = None
    pending = activity.pending_requests(call.services.store, limit=1000)
    return render(call, "overview.html", chart=chart(hours), hours=hours, certificates=certificates,
                  warning_days=EXPIRY_WARNING.days, findings=findings, pending=len(pending), now=now)


# --- one-time passwords ------------------------------------------------------------------------


def otp_page(call: Call, password: str | None = None, expires: dt.datetime | None = None) -> Response:
    return render(call, "otp.html", validity=call.facts().otp_validity, password=password, expires=expires)


def otp_new(call: Call) -> Response:
    validity = call.facts().otp_validity
    if validity is None:
        return refused(call, Refusal(ErrorCode.ONE_TIME_PASSWORDS_DISABLED, "one-time passwords are off"))
    password, expires = call.services.admin.new_one_time_password(validity, actor=actor(call))
    return otp_page(call, password, expires)


# --- pending requests --------------------------------------------------------------------------


def pending(call: Call, notice: str | None = None, error: Refusal | None = None) -> Response:
    requests = activity.pending_requests(call.services.store)
    return render(call, "requests.html", requests=requests, notice=notice, error=error,
                  status=error.http_status if error else 200)


def approve(call: Call) -> Response:
    tid = call.arg("transaction_id")
    cert = call.services.admin.approve(tid, actor=actor(call))
    if isinstance(cert, Refusal):
        return pending(call, error=cert)
    return pending(call, notice=f"Approved {tid}: certificate {cert.serial_number:x} issued; the client collects it "
                                "with its next CertPoll.")


def deny(call: Call) -> Response:
    tid, reason = call.arg("transaction_id"), call.arg("reason").strip()
    if not reason:
        return pending(call, error=Refusal(ErrorCode.REQUEST_MALFORMED, "give a reason for the denial"))
    refusal = call.services.admin.deny(tid, reason, actor=actor(call))
    return pending(call, error=refusal) if refusal else pending(call, notice=f"Denied {tid}.")


# --- certificates ------------------------------------------------------------------------------


def certificates(call: Call) -> Response:
    found = activity.find_certificates(call.services.store, call.arg("q"), call.arg("state"))
    return render(call, "certs.html", found=found, q=call.arg("q"), state=call.arg("state"), now=_now(call))


def _record(call: Call):
    serial = call.request.path_params["serial"]
    record = activity.find_certificate(call.services.store, serial)
    if record is None:
        return refused(call, Refusal(ErrorCode.CERTIFICATE_UNKNOWN, "no certificate with that serial"))
    return record


def certificate(call: Call, notice: str | None = None, error: Refusal | None = None) -> Response:
    record = _record(call)
    if isinstance(record, Response):
        return record
    renewals = call.services.store.renewals_of(record.serial)
    return render(call, "cert.html", view=activity.certificate_view(record), renewals=renewals, reasons=REVOCATION_REASONS,
                  notice=notice, error=error, now=_now(call), status=error.http_status if error else 200)


def certificate_pem(call: Call) -> Response:
    record = _record(call)
    if isinstance(record, Response):
        return record
    download = {**headers(call.request), "Content-Disposition": f'attachment; filename="{record.serial}.pem"'}
    return Response(activity.certificate_view(record).pem, media_type="application/x-pem-file", headers=download)


def revoke(call: Call) -> Response:
    record = _record(call)
    if isinstance(record, Response):
        return record
    revoked = call.services.admin.revoke(record.serial, call.arg("reason"), with_renewals=call.arg("with_renewals") == "1",
                                         actor=actor(call))
    if isinstance(revoked, Refusal):
        return certificate(call, error=revoked)
    return certificate(call, notice=f"Revoked {len(revoked)} certificate(s); the CRL is re-signed.")


# --- the request log ---------------------------------------------------------------------------


def _time(text: str) -> dt.datetime | None:
    """A datetime-local field's value in UTC (read as UTC without an offset); None when empty,
    unreadable or outside the years datetime can hold in UTC (0001-01-01T00:00+01:00)."""
    try:
        value = dt.datetime.fromisoformat(text) if text else None
        return value.replace(tzinfo=value.tzinfo or dt.UTC).astimezone(dt.UTC) if value else None
    except (ValueError, OverflowError):
        return None


def audit_trail(call: Call) -> Response:
    """Who did what, when and from where (CLI, API, console, Intune): for operators, whose
    actions it records; a viewer reads the certificates and the log, not the others' doings."""
    if not call.session.may_act:
        return refused(call, Refusal(ErrorCode.ROLE_NOT_ALLOWED, "the audit trail is for operators"))
    since = _time(call.arg("since")) or _now(call) - dt.timedelta(days=7)
    action = call.arg("action").strip()
    events = call.services.store.audit_events(since=since, limit=500, action=action or None)
    return render(call, "audit.html", events=list(reversed(events)), since=since, action=action)


def request_log(call: Call) -> Response:
    wanted = activity.LogFilter(transaction_id=call.arg("transaction_id").strip(), code=call.arg("code"),
                                since=_time(call.arg("since")), until=_time(call.arg("until")),
                                failures_only=call.arg("failures") == "1")
    entries = activity.read_log(call.facts().log_file, wanted)
    return render(call, "log.html", entries=entries, wanted=wanted, codes=activity.known_codes(),
                  since=call.arg("since"), until=call.arg("until"), has_log=call.facts().log_file is not None)
