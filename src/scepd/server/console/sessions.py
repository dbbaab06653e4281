"""Who may use the console, decided before any page: the transport, the session, the form
token and the role.

The session cookie is `Secure; HttpOnly; SameSite=Strict`, path /admin: never sent over
plain HTTP to another host, never readable by a script, never sent with a request another
site starts. A browser keeps a Secure cookie only from a secure context, which plain HTTP is
only on the loopback address: so the console answers over HTTPS, or over HTTP when both ends
are this machine, and refuses otherwise (ConsoleNeedsHttps) before a password can cross the
network in clear. Every POST carries the session's CSRF token; the sign-in form, which has no
session yet, carries a token that must match a cookie of its own (double submit)."""

from __future__ import annotations

import ipaddress
import secrets

from starlette.requests import Request
from starlette.responses import Response

from scepd.protocol.errors import ErrorCode, Refusal
from scepd.service.accounts import Accounts, SignedIn, csrf_matches

SESSION_COOKIE = "scepd_console"
LOGIN_COOKIE = "scepd_console_login"
PATH = "/admin"


def _loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def transport_refusal(request: Request) -> Refusal | None:
    """None when the console may answer this request: over HTTPS, or over HTTP from this
    machine to a loopback address (a secure context for the browser)."""
    if request.url.scheme == "https":
        return None
    client = request.client.host if request.client else None
    if _loopback(request.url.hostname) and _loopback(client):
        return None
    return Refusal(ErrorCode.CONSOLE_NEEDS_HTTPS, "the console answers over HTTPS, or over HTTP on 127.0.0.1 only")


def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=PATH, secure=True, httponly=True, samesite="strict")


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=PATH, secure=True, httponly=True, samesite="strict")


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def login_token_matches(request: Request, form: dict) -> bool:
    cookie, sent = request.cookies.get(LOGIN_COOKIE), form.get("csrf_token")
    return bool(cookie and sent) and secrets.compare_digest(cookie.encode(), str(sent).encode())


def signed_in(request: Request, accounts: Accounts) -> SignedIn | None:
    return accounts.session(request.cookies.get(SESSION_COOKIE))


def action_refusal(session: SignedIn, form: dict, operator: bool) -> Refusal | None:
    """Why a POST of `session` may not go on: a missing or foreign form token, or a viewer
    asking for an operator's action."""
    if not csrf_matches(session, form.get("csrf_token")):
        return Refusal(ErrorCode.CSRF_TOKEN_INVALID, "the form's token is missing or not this session's")
    if operator and not session.may_act:
        return Refusal(ErrorCode.ROLE_NOT_ALLOWED, f"{session.account} is a {session.role}: viewers may not change anything")
    return None
