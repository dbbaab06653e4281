"""The operator's console at /admin, over HTTP against a real `scepd serve`: sign-in and its
cookie, sign-out, CSRF, roles, lock-out, sessions' expiry, escaping of peers' strings, the
pages' actions through the administration (OTP, approve, deny, revoke, PEM), the request log
with remedies, and `scepd admin`.

httpx (like Python's cookiejar) never sends a Secure cookie over plain HTTP, even to
127.0.0.1, where browsers do; `Browser` below keeps the cookies itself, as a browser would."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import html
import json
import re
import sqlite3
import subprocess
import threading

import httpx
import pytest
from argon2 import PasswordHasher
from conftest import CHALLENGE, SCEPD, RunningServer, name, new_key, run_scepd
from cryptography import x509
from sqlalchemy import select
from starlette.requests import Request
from starlette.testclient import TestClient

from scepd.client import ScepClient
from scepd.clock import SYSTEM_CLOCK, FixedClock
from scepd.protocol import PkiStatus
from scepd.protocol.errors import ErrorCode, KeyUnavailable
from scepd.registry.config import update_config_file
from scepd.registry.instance import Instance, create_instance
from scepd.server.console.sessions import transport_refusal
from scepd.service.accounts import (
    ABSOLUTE,
    IDLE,
    LOCK_FOR,
    MAX_FAILURES,
    MAX_VERIFYING,
    Accounts,
)
from scepd.service.admin import Actor, AuditTrail
from scepd.store import Store
from scepd.store.accounts import SESSIONS, AccountStore
from scepd.wiring import console_facts

OPERATOR, VIEWER, PASSWORD = "olga", "victor", "a-long-enough-password"
ENCRYPT_ONLY = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
PAGES = ["/admin/", "/admin/otp", "/admin/requests", "/admin/certs", "/admin/log"]
SIGNED_IN_ONLY = [*PAGES, "/admin/audit", "/admin/certs/ab", "/admin/certs/ab/pem"]
ACTIONS = ["/admin/otp", "/admin/requests/approve", "/admin/requests/deny", "/admin/certs/ab/revoke", "/admin/logout"]


def scepd_with_input(text: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SCEPD, *args], input=text, capture_output=True, text=True, timeout=60)


def add_admin(directory, account: str, role: str, password: str = PASSWORD):
    return scepd_with_input(password, "admin", "add", account, "--role", role, "--password-stdin", "--dir", str(directory))


class Browser:
    """An HTTP client that keeps cookies as a browser does on http://127.0.0.1."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
        self.cookies: dict[str, str] = {}
        self.last: httpx.Response | None = None

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for header in response.headers.get_list("set-cookie"):
            pair = header.split(";", 1)[0]
            key, _, value = pair.partition("=")
            if "max-age=0" in header.lower():
                self.cookies.pop(key, None)
            else:
                self.cookies[key] = value
        self.last = response
        return response

    def _cookie(self) -> dict:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}

    def get(self, path: str, **params) -> httpx.Response:
        return self._keep(self.http.get(path, params=params, headers=self._cookie()))

    def post(self, path: str, data: dict) -> httpx.Response:
        return self._keep(self.http.post(path, data=data, headers=self._cookie()))

    def token(self, page: str = "/admin/") -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', self.get(page).text).group(1)

    def sign_in(self, account: str, password: str = PASSWORD) -> httpx.Response:
        token = self.token("/admin/login")
        return self.post("/admin/login", {"csrf_token": token, "name": account, "password": password, "next": "/admin/"})


@pytest.fixture(scope="module")
def console_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("console")
    create_instance(d, ca_subject="CN=Console CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"templates": {"Manual": {"approval": "manual"}},
                                          "template_mapping": {"EncryptionTemplate": "Manual"}})
    assert add_admin(d, OPERATOR, "operator").returncode == 0
    assert add_admin(d, VIEWER, "viewer").returncode == 0
    return d


@pytest.fixture(scope="module")
def srv(console_dir):
    server = RunningServer(console_dir)
    yield server
    server.stop()


@pytest.fixture
def operator(srv):
    browser = Browser(f"http://127.0.0.1:{srv.port}")
    assert browser.sign_in(OPERATOR).status_code == 303
    return browser


def test_no_page_without_a_session_and_no_action_either(srv):
    anonymous = Browser(f"http://127.0.0.1:{srv.port}")
    for page in SIGNED_IN_ONLY:
        answer = anonymous.get(page)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/admin/login?next="), page
        assert answer.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in answer.headers[
            "content-security-policy"], page  # a redirect carries the pages' headers too
        assert "strict-transport-security" not in answer.headers  # not over plain HTTP (RFC 6797 8.1)
    for action in ACTIONS:
        answer = anonymous.post(action, {"csrf_token": "x", "transaction_id": "t", "reason": "r"})
        assert answer.status_code == 403 and "SessionRequired" in answer.text, action
    forged = Browser(f"http://127.0.0.1:{srv.port}")
    forged.cookies["scepd_console"] = "not-a-session"
    assert forged.get("/admin/certs").status_code == 303


def test_sign_in_sets_a_secure_httponly_strict_cookie_and_sign_out_ends_it(srv):
    browser = Browser(f"http://127.0.0.1:{srv.port}")
    signed_in = browser.sign_in(OPERATOR)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/admin/"
    cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith("scepd_console="))
    assert {"Secure", "HttpOnly", "SameSite=strict", "Path=/admin"} <= {p.strip() for p in cookie.split(";")}
    page = browser.get("/admin/")
    assert page.status_code == 200 and "Overview" in page.text and "Content-Security-Policy" in page.headers
    session = browser.cookies["scepd_console"]
    assert browser.post("/admin/logout", {"csrf_token": browser.token()}).status_code == 303
    browser.cookies["scepd_console"] = session  # a copied cookie no longer signs anybody in
    assert browser.get("/admin/").status_code == 303


def test_sign_in_refuses_a_form_without_its_own_token(srv):
    browser = Browser(f"http://127.0.0.1:{srv.port}")
    browser.get("/admin/login")
    answer = browser.post("/admin/login", {"csrf_token": "forged", "name": OPERATOR, "password": PASSWORD})
    assert answer.status_code == 403 and "CsrfTokenInvalid" in answer.text
    assert "scepd_console" not in browser.cookies


def test_a_post_without_the_sessions_csrf_token_is_refused(srv, operator):
    other = Browser(f"http://127.0.0.1:{srv.port}")
    other.sign_in(VIEWER)
    for token in (None, "", other.token()):  # none, empty, another session's
        data = {"csrf_token": token} if token is not None else {}
        answer = operator.post("/admin/otp", data)
        assert answer.status_code == 403 and "CsrfTokenInvalid" in answer.text
        assert "enrollment challenge password is" not in answer.text


def test_a_viewer_reads_every_page_but_changes_nothing(srv, console_dir):
    viewer = Browser(f"http://127.0.0.1:{srv.port}")
    assert viewer.sign_in(VIEWER).status_code == 303
    for page in PAGES:
        assert viewer.get(page).status_code == 200, page
    with ScepClient(srv.url) as client:
        pending = client.enroll(new_key(), name("viewer-sees-me"), challenge=CHALLENGE, key_usage=ENCRYPT_ONLY)
    assert pending.status is PkiStatus.PENDING
    listing = viewer.get("/admin/requests").text
    assert "viewer-sees-me" in listing and "Approve" not in listing
    token = viewer.token()
    for action in ("/admin/otp", "/admin/requests/approve"):
        answer = viewer.post(action, {"csrf_token": token, "transaction_id": pending.transaction_id})
        assert answer.status_code == 403 and "RoleNotAllowed" in answer.text
    record = json.loads(run_scepd("requests", "show", pending.transaction_id, "--dir", str(console_dir)).stdout)
    assert record["status"] == "pending"


def test_an_otp_from_the_console_enrolls_once(srv, operator):
    page = operator.post("/admin/otp", {"csrf_token": operator.token()})
    assert page.status_code == 200 and "It expires at" in page.text
    password = html.unescape(re.search(r'<output id="otp">([^<]+)</output>', page.text).group(1))
    with ScepClient(srv.url) as client:
        first = client.enroll(new_key(), name("otp-device"), challenge=password)
        again = client.enroll(new_key(), name("otp-device-2"), challenge=password)
    assert first.status is PkiStatus.SUCCESS, first.fail_info_text
    assert again.status is PkiStatus.FAILURE and again.fail_info_text.startswith("OneTimePasswordUsed")


def test_approve_and_deny_with_a_reason(srv, operator, console_dir):
    with ScepClient(srv.url) as client:
        wanted = client.enroll(new_key(), name("approve-me"), challenge=CHALLENGE, key_usage=ENCRYPT_ONLY)
        unwanted = client.enroll(new_key(), name("deny-me"), challenge=CHALLENGE, key_usage=ENCRYPT_ONLY)
    token = operator.token()
    approved = operator.post("/admin/requests/approve", {"csrf_token": token, "transaction_id": wanted.transaction_id})
    assert approved.status_code == 200 and "Approved" in approved.text
    unreasoned = operator.post("/admin/requests/deny", {"csrf_token": token, "transaction_id": unwanted.transaction_id,
                                                        "reason": " "})
    assert "give a reason" in unreasoned.text
    denied = operator.post("/admin/requests/deny", {"csrf_token": token, "transaction_id": unwanted.transaction_id,
                                                    "reason": "not one of ours"})
    assert "Denied" in denied.text
    twice = operator.post("/admin/requests/approve", {"csrf_token": token, "transaction_id": unwanted.transaction_id})
    assert "RequestNotPending" in twice.text
    record = json.loads(run_scepd("requests", "show", unwanted.transaction_id, "--dir", str(console_dir)).stdout)
    assert (record["status"], record["reason"]) == ("denied", "not one of ours")
    audit = run_scepd("audit", "--json", "--dir", str(console_dir))  # names the console's account and address
    events = [e for e in json.loads(audit.stdout) if e.get("target") == wanted.transaction_id]
    assert [(e["actor_kind"], e["actor"], e["address"]) for e in events] == [("console", OPERATOR, "127.0.0.1")]
    # The console shows the same trail to operators, and only to them.
    trail = operator.get("/admin/audit")
    assert trail.status_code == 200 and wanted.transaction_id in trail.text and "request.approve" in trail.text
    assert f"console: {OPERATOR}" in trail.text
    viewer = Browser(f"http://127.0.0.1:{srv.port}")
    viewer.sign_in(VIEWER)
    hidden = viewer.get("/admin/audit")
    assert hidden.status_code == 403 and "RoleNotAllowed" in hidden.text
    assert "/admin/audit" not in viewer.get("/admin/").text


def test_search_detail_pem_and_revoke(srv, operator):
    with ScepClient(srv.url) as client:
        issued = client.enroll(new_key(), name("search-me"), challenge=CHALLENGE, sans=[x509.DNSName("found.example")])
    serial = format(issued.certificate.serial_number, "x")
    for query in ("search-me", "found.example", serial[:10].upper()):
        assert serial in operator.get("/admin/certs", q=query).text, query
    assert serial not in operator.get("/admin/certs", q="search-me", state="revoked").text
    detail = operator.get(f"/admin/certs/{serial}")
    assert "dns:found.example" in detail.text
    pem = operator.get(f"/admin/certs/{serial}/pem")
    assert x509.load_pem_x509_certificate(pem.content) == issued.certificate
    assert "attachment" in pem.headers["content-disposition"]
    revoked = operator.post(f"/admin/certs/{serial}/revoke", {"csrf_token": operator.token(), "reason": "keyCompromise"})
    assert "Revoked 1 certificate" in revoked.text and "keyCompromise" in revoked.text
    crl = x509.load_der_x509_crl(httpx.get(issued.certificate.extensions.get_extension_for_class(
        x509.CRLDistributionPoints).value[0].full_name[0].value).content)
    assert crl.get_revoked_certificate_by_serial_number(issued.certificate.serial_number) is not None
    unknown = operator.get("/admin/certs/zz-not-hex")
    assert unknown.status_code == 400 and "CertificateUnknown" in unknown.text


def test_peers_strings_are_escaped(srv, operator):
    hostile = "<script>alert(1)</script>"
    with ScepClient(srv.url) as client:
        issued = client.enroll(new_key(), name(hostile), challenge=CHALLENGE, sans=[x509.UniformResourceIdentifier(hostile)])
    assert issued.status is PkiStatus.SUCCESS
    for page in (operator.get("/admin/certs", q="alert"), operator.get(f"/admin/certs/{issued.certificate.serial_number:x}")):
        assert "<script" not in page.text
        assert "uri:&lt;script&gt;alert(1)&lt;/script&gt;" in page.text  # the SAN as sent
        assert r"CN=\&lt;script\&gt;alert(1)\&lt;/script\&gt;" in page.text  # the subject, RFC 4514-escaped


def test_the_request_log_finds_a_failure_with_its_remedy(srv, operator):
    with ScepClient(srv.url) as client:
        refused = client.enroll(new_key(), name("wrong-challenge"), challenge="wrong")
    assert refused.status is PkiStatus.FAILURE
    page = operator.get("/admin/log", transaction_id=refused.transaction_id)
    assert "ChallengePasswordIncorrect" in page.text
    assert "Remedy: Use the static challenge from scepd.toml" in page.text
    assert operator.get("/admin/log", code="ChallengePasswordIncorrect", failures="1").text.count(
        refused.transaction_id) >= 1
    since = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert "No entry matches" in operator.get("/admin/log", transaction_id=refused.transaction_id, since=since).text
    overview = operator.get("/admin/").text
    assert "<svg" in overview and "ChallengePasswordIncorrect" in overview and "RA" in overview


def _without_values(page: str) -> str:
    """A sign-in page without what differs from one answer to the next (tokens, the name)."""
    return re.sub(r'value="[^"]*"', 'value=""', page)


def test_five_failures_lock_the_account_without_telling_which_names_exist(srv, console_dir):
    assert add_admin(console_dir, "locky", "viewer").returncode == 0
    browser = Browser(f"http://127.0.0.1:{srv.port}")
    for _ in range(5):
        wrong = browser.sign_in("locky", "wrong-password!")
        assert wrong.status_code == 401 and "SignInFailed" in wrong.text
    locked = browser.sign_in("locky")  # the right password, while locked: refused, as a wrong one is
    unknown = browser.sign_in("nobody-at-all", "wrong-password!")  # unknown names are never locked
    assert locked.status_code == unknown.status_code == 401
    assert _without_values(locked.text) == _without_values(unknown.text) == _without_values(wrong.text)
    assert "scepd_console" not in browser.cookies
    (row,) = [r for r in json.loads(run_scepd("admin", "list", "--json", "--dir", str(console_dir)).stdout)
              if r["name"] == "locky"]
    assert row["locked_until"] is not None  # the administrator sees the lock
    passwd = scepd_with_input(PASSWORD + "2", "admin", "passwd", "locky", "--password-stdin", "--dir", str(console_dir))
    assert passwd.returncode == 0
    assert browser.sign_in("locky", PASSWORD + "2").status_code == 303
    events = [e for e in json.loads(run_scepd("audit", "--json", "--dir", str(console_dir)).stdout)
              if e["target"] == "locky"]
    assert [(e["action"], e["result"]) for e in events] == [
        ("admin.add", "ok"), *[("console.sign_in", "SignInFailed")] * 4, ("console.lock_out", "ok"),
        ("console.sign_in", "SignInFailed"), ("console.sign_in", "SignInFailed"), ("admin.passwd", "ok"),
        ("console.sign_in", "ok")]
    assert {e["address"] for e in events if e["action"].startswith("console.")} == {"127.0.0.1"}


class CountingHasher(PasswordHasher):
    """Argon2 as the accounts use it, counting the verifies, and running `during` inside one."""

    def __init__(self) -> None:
        super().__init__()
        self.verified = 0
        self.during = None

    def verify(self, hash, password):
        self.verified += 1
        if self.during is not None:
            self.during()
        return super().verify(hash, password)


def test_a_locked_account_costs_one_verify_and_a_lock_during_it_refuses_the_sign_in(tmp_path):
    clock = FixedClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    store = Store(f"sqlite:///{tmp_path / 'a.db'}", clock=clock)
    store.upgrade()
    hasher = CountingHasher()
    accounts = Accounts(store, clock, hasher)
    accounts.add("ann", PASSWORD, "operator")
    for _ in range(5):
        accounts.sign_in("ann", "wrong", None)
    hasher.verified = 0
    assert accounts.sign_in("ann", PASSWORD, None).code is ErrorCode.SIGN_IN_FAILED
    assert accounts.sign_in("nobody", PASSWORD, None).code is ErrorCode.SIGN_IN_FAILED
    assert hasher.verified == 2  # Argon2 for the locked account as for the unknown name: the same time
    clock.advance(LOCK_FOR + dt.timedelta(seconds=1))
    # Sign-ins beside this one lock the account while its (right) password is being verified.
    hasher.during = lambda: [AccountStore(store).count_failure("ann", MAX_FAILURES, LOCK_FOR) for _ in range(5)]
    assert accounts.sign_in("ann", PASSWORD, "192.0.2.1").code is ErrorCode.SIGN_IN_FAILED
    assert store.rows(select(SESSIONS)) == []  # no session was made


def test_only_a_few_passwords_are_verified_at_once(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.upgrade()
    hasher = CountingHasher()
    accounts = Accounts(store, hasher=hasher)
    accounts.add("ann", PASSWORD, "operator")
    inside, release = threading.Barrier(MAX_VERIFYING + 1), threading.Event()
    hasher.during = lambda: (inside.wait(10), release.wait(10))
    with concurrent.futures.ThreadPoolExecutor(MAX_VERIFYING) as pool:
        running = [pool.submit(accounts.sign_in, "ann", PASSWORD, None) for _ in range(MAX_VERIFYING)]
        inside.wait(10)  # MAX_VERIFYING verifies are under way
        busy = accounts.sign_in("ann", PASSWORD, None)
        release.set()
        assert busy.code is ErrorCode.CONSOLE_BUSY and busy.http_status == 429 and busy.remedy.endswith(".")
        assert all(isinstance(r.result(10), tuple) for r in running)
    assert hasher.verified == MAX_VERIFYING


def test_the_console_refuses_plain_http_from_another_machine():
    def request(scheme, host, client):
        return Request({"type": "http", "scheme": scheme, "server": (host, 8443), "path": "/admin/", "headers": [
            (b"host", host.encode())], "client": (client, 5000), "query_string": b""})

    assert transport_refusal(request("http", "scepd.example", "192.0.2.7")).code.value == "ConsoleNeedsHttps"
    assert transport_refusal(request("http", "127.0.0.1", "192.0.2.7")) is not None  # a forged Host header
    assert transport_refusal(request("http", "127.0.0.1", "127.0.0.1")) is None
    assert transport_refusal(request("https", "scepd.example", "192.0.2.7")) is None


def test_sessions_end_when_idle_or_old_and_locks_end_after_their_time(tmp_path):
    clock = FixedClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    store = Store(f"sqlite:///{tmp_path / 'a.db'}", clock=clock)
    store.upgrade()
    accounts = Accounts(store, clock)
    accounts.add("ann", PASSWORD, "operator")
    cookie, _ = accounts.sign_in("ann", PASSWORD, "127.0.0.1")
    clock.advance(IDLE - dt.timedelta(seconds=1))
    assert accounts.session(cookie) is not None  # and the idle time starts again
    clock.advance(IDLE - dt.timedelta(seconds=1))
    assert accounts.session(cookie) is not None
    clock.advance(IDLE + dt.timedelta(seconds=1))
    assert accounts.session(cookie) is None
    cookie, _ = accounts.sign_in("ann", PASSWORD, None)
    for _ in range(int(ABSOLUTE / (IDLE / 2)) + 1):
        clock.advance(IDLE / 2)
    assert accounts.session(cookie) is None
    for _ in range(5):
        accounts.sign_in("ann", "wrong", None)
    assert accounts.sign_in("ann", PASSWORD, None).code.value == "SignInFailed"  # locked: as a wrong one
    clock.advance(LOCK_FOR + dt.timedelta(seconds=1))
    assert not hasattr(accounts.sign_in("ann", PASSWORD, None), "code")
    assert store.find_certificate("00") is None  # the store's own tables still answer
    assert "$argon2id$" in accounts.list()[0].password_hash


def test_admin_cli_adds_lists_and_removes_and_refuses_short_passwords(tmp_path):
    d = tmp_path / "cli"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    short = add_admin(d, "sam", "operator", password="short")
    assert short.returncode == 1 and "fewer than 12" in short.stderr
    assert add_admin(d, "sam", "operator").returncode == 0
    assert "exists" in add_admin(d, "sam", "viewer").stderr
    rows = json.loads(run_scepd("admin", "list", "--json", "--dir", str(d)).stdout)
    assert [(r["name"], r["role"]) for r in rows] == [("sam", "operator")]
    assert all(PASSWORD.encode() not in f.read_bytes() for f in d.glob("*.db*"))
    assert run_scepd("admin", "remove", "sam", "--dir", str(d)).returncode == 0
    assert run_scepd("admin", "remove", "sam", "--dir", str(d)).returncode == 1
    events = json.loads(run_scepd("audit", "--json", "--dir", str(d)).stdout)
    assert [(e["action"], e["target"], e["result"], e["actor_kind"]) for e in events if e["action"].startswith("admin.")] == [
        ("admin.add", "sam", "PasswordTooShort", "cli"), ("admin.add", "sam", "ok", "cli"),
        ("admin.add", "sam", "AccountExists", "cli"), ("admin.remove", "sam", "ok", "cli"),
        ("admin.remove", "sam", "AccountUnknown", "cli")]
    assert PASSWORD not in (d / "scepd.log").read_text()


def test_the_request_log_leaves_out_the_audit_trail_and_the_sign_ins(srv, operator, console_dir):
    assert httpx.get(srv.url, params={"operation": "GetCACaps"}).status_code == 200  # a request's line
    operator.post("/admin/otp", {"csrf_token": operator.token()})  # an otp.new line of scepd.audit
    Browser(f"http://127.0.0.1:{srv.port}").sign_in("typo-of-a-name", "wrong-password!")  # a scepd.console line
    logged = [json.loads(line) for line in srv.log_lines() if line.startswith("{")]
    assert {"scepd.audit", "scepd.console"} <= {line.get("logger") for line in logged}
    viewer = Browser(f"http://127.0.0.1:{srv.port}")
    viewer.sign_in(VIEWER)
    page = viewer.get("/admin/log").text
    assert "otp.new" not in page and "typo-of-a-name" not in page and "console sign-in" not in page
    assert "GetCACaps" in page  # the requests are there


def test_sign_in_failure_and_sign_out_are_audited_with_the_address(srv, console_dir):
    browser = Browser(f"http://127.0.0.1:{srv.port}")
    browser.sign_in(VIEWER, "not-the-password")
    browser.sign_in(VIEWER)
    browser.post("/admin/logout", {"csrf_token": browser.token()})
    events = [e for e in json.loads(run_scepd("audit", "--json", "--dir", str(console_dir)).stdout)
              if e["target"] == VIEWER]
    assert ("admin.add", "cli", "ok") == (events[0]["action"], events[0]["actor_kind"], events[0]["result"])
    assert [(e["action"], e["actor_kind"], e["actor"], e["address"], e["result"]) for e in events[-3:]] == [
        ("console.sign_in", "console", VIEWER, "127.0.0.1", "SignInFailed"),
        ("console.sign_in", "console", VIEWER, "127.0.0.1", "ok"),
        ("console.sign_out", "console", VIEWER, "127.0.0.1", "ok")]
    only = json.loads(run_scepd("audit", "--json", "--action", "console.sign_out", "--dir", str(console_dir)).stdout)
    assert only and {e["action"] for e in only} == {"console.sign_out"}


def test_a_database_outage_is_a_page_with_its_code_not_a_500(srv, operator, console_dir):
    holder = sqlite3.connect(console_dir / "scepd.db", timeout=1)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the one writer: the session's touch waits past busy_timeout
        answer = operator.get("/admin/certs")
    finally:
        holder.rollback()
        holder.close()
    assert answer.status_code == 503 and "StoreUnavailable" in answer.text and "Transient" in answer.text
    assert answer.headers["x-frame-options"] == "DENY"
    assert operator.get("/admin/certs").status_code == 200  # and back once the database is


def test_the_audit_page_reads_any_time_and_filters_before_its_limit(srv, operator, console_dir):
    for since in ("0001-01-01T00:00+01:00", "9999-12-31T23:59-01:00", "0001-01-01T00:00", "not a time"):
        assert operator.get("/admin/audit", since=since).status_code == 200, since
    store = Store(f"sqlite:///{console_dir / 'scepd.db'}")
    trail = AuditTrail(store, SYSTEM_CLOCK)
    trail.record(Actor("cli", "root", "pts/0 on host"), "ca.install", "the rare one")
    for i in range(510):  # more than the page's 500, all newer
        trail.record(Actor("cli", "root", "pts/0 on host"), "otp.new", f"filler {i}")
    store.dispose()
    page = operator.get("/admin/audit", action="ca.install")
    assert page.status_code == 200 and "the rare one" in page.text and "filler" not in page.text


def test_peers_strings_are_escaped_in_the_log_the_requests_and_the_chart(srv, operator, console_dir):
    hostile = "<script>alert(1)</script>"
    with ScepClient(srv.url) as client:
        pending = client.enroll(new_key(), name(hostile), challenge=CHALLENGE, key_usage=ENCRYPT_ONLY)
    assert pending.status is PkiStatus.PENDING
    requests_page = operator.get("/admin/requests").text
    assert pending.transaction_id in requests_page and "<script" not in requests_page
    assert r"CN=\&lt;script\&gt;alert(1)\&lt;/script\&gt;" in requests_page
    # A log line carrying peers' strings (what a log written by another tool could hold):
    now = dt.datetime.now(dt.UTC).isoformat()
    line = {"ts": now, "level": "WARNING", "logger": "scepd.request", "operation": "PKIOperation",
            "transaction_id": hostile, "code": "<img src=x onerror=alert(2)>", "reason": hostile}
    with (console_dir / "scepd.log").open("a") as log:
        log.write(json.dumps(line) + "\n")
    for page in (operator.get("/admin/log", failures="1").text, operator.get("/admin/").text):
        assert "<script" not in page and "<img" not in page
        assert "&lt;img src=x onerror=alert(2)&gt;" in page  # the code as the chart's label and the log's
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in operator.get("/admin/log", failures="1").text


@pytest.fixture
def in_process(console_dir):
    """The console in Starlette's TestClient over https://127.0.0.1, with the services at hand."""
    from scepd.server.app import create_app
    from scepd.wiring import build_services

    instance = Instance.open(console_dir)
    services = build_services(instance, instance.open_store())
    with TestClient(create_app(services, 1 << 20, threads=2), base_url="https://127.0.0.1") as client:
        yield client, services
    services.store.dispose()


def _csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def _sign_in_in_process(client) -> str:
    token = _csrf(client.get("/admin/login").text)
    answer = client.post("/admin/login", data={"csrf_token": token, "name": OPERATOR, "password": PASSWORD},
                         follow_redirects=False)
    assert answer.status_code == 303
    return _csrf(client.get("/admin/requests").text)  # a page that shows no facts (none cached yet)


def test_the_console_runs_on_its_own_threads_and_an_hsm_outage_is_a_503(in_process, monkeypatch):
    client, services = in_process
    token = _sign_in_in_process(client)
    ran_on = []

    def approve(transaction_id, actor):
        ran_on.append(threading.current_thread().name)
        raise KeyUnavailable("the CA's token is gone")

    monkeypatch.setattr(services.admin, "approve", approve)
    answer = client.post("/admin/requests/approve", data={"csrf_token": token, "transaction_id": "t"})
    assert answer.status_code == 503 and "KeyUnavailable" in answer.text and "the CA&#39;s token is gone" in answer.text
    assert ran_on[0].startswith("scepd-console")  # not on the threads enrollments run on
    assert answer.headers["strict-transport-security"].startswith("max-age=")  # over HTTPS, HSTS


def test_the_overview_runs_doctor_at_most_once_a_minute(in_process, monkeypatch):
    from scepd.server.console import page

    client, _services = in_process
    _sign_in_in_process(client)
    built, doctored = [], []

    def counted(services):
        built.append(services)
        facts = console_facts(services)
        return dataclasses.replace(facts, doctor=lambda: doctored.append(1) or facts.doctor())

    monkeypatch.setattr(page, "console_facts", counted)
    for _ in range(3):
        assert client.get("/admin/").status_code == 200
    assert client.get("/admin/log").status_code == 200
    assert (len(built), len(doctored)) == (1, 1)  # keys loaded once, doctor run once
    monkeypatch.setattr(page, "DOCTOR_FOR", 0.0)  # a minute later
    assert client.get("/admin/").status_code == 200
    assert (len(built), len(doctored)) == (1, 2)
