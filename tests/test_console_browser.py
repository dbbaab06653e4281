"""The console in a real browser: Debian's headless Chromium driven by Selenium through
/usr/bin/chromedriver (make test installs both). Sign in; make a one-time password and enroll
strongSwan with it; approve a pending request and watch strongSwan collect it by polling;
revoke a certificate and find it in the CRL with openssl; CSRF and roles enforced in the
browser too; pages refused without a session.

With SCEPD_SCREENSHOTS=DIR the same run saves a PNG of each page into DIR (docs/console
holds those of docs/console.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import CHALLENGE, RunningServer, name, new_key, openssl_verify, require_tool, run_scepd
from cryptography import x509
from test_console import ENCRYPT_ONLY, OPERATOR, PASSWORD, VIEWER, add_admin

from scepd.client import ScepClient
from scepd.protocol import PkiStatus
from scepd.registry.config import update_config_file
from scepd.registry.instance import create_instance

CHROMEDRIVER, CHROMIUM = "/usr/bin/chromedriver", "/usr/bin/chromium"
SHOTS = os.environ.get("SCEPD_SCREENSHOTS")


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    create_instance(d, ca_subject="CN=Example Corp Issuing CA,O=Example Corp", key_spec="rsa:2048",
                    static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"templates": {"Manual": {"approval": "manual"}},
                                          "template_mapping": {"EncryptionTemplate": "Manual"}})
    assert add_admin(d, OPERATOR, "operator").returncode == 0
    assert add_admin(d, VIEWER, "viewer").returncode == 0
    return d


@pytest.fixture(scope="module")
def srv(instance):
    server = RunningServer(instance)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require_tool("chromium")
    require_tool("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def by(kind):
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def shot(driver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, max(700, min(height + 40, 2400)))
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))
        driver.set_window_size(1280, 1000)


def sign_in(driver, base: str, account: str) -> None:
    driver.get(f"{base}/admin/login")
    driver.find_element(by("ID"), "name").send_keys(account)
    driver.find_element(by("ID"), "password").send_keys(PASSWORD)
    driver.find_element(by("CSS_SELECTOR"), "form button[type=submit]").click()
    # click() returns before the next page has loaded: wait for it, not for the old one's h1.
    arrived = _wait(driver, lambda: "/admin/login" not in driver.current_url)
    assert arrived and driver.find_element(by("TAG_NAME"), "h1").text == "Overview", driver.page_source[:2000]


def sign_out(driver) -> None:
    driver.find_element(by("CSS_SELECTOR"), "form.signout button").click()
    assert _wait(driver, lambda: driver.current_url.endswith("/admin/login")), driver.current_url


def _wait(driver, condition, timeout: float = 10.0) -> bool:
    """Whether `condition` held within `timeout` seconds, and the page it held on has loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition() and driver.execute_script("return document.readyState") == "complete":
            return True
        time.sleep(0.05)
    return False


def pki(*args, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(["pki", *args], cwd=cwd, capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def strongswan(srv, tmp_path_factory):
    require_tool("pki")
    work = tmp_path_factory.mktemp("strongswan-console")
    fetched = pki("--scepca", "--url", srv.url, "--caout", "ca.pem", "--raout", "ra.pem", "--outform", "pem", cwd=work)
    assert fetched.returncode == 0, fetched.stderr
    return work


def strongswan_enroll(work: Path, url: str, cn: str, password: str, *extra: str, wait: bool = True):
    key = pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "pem", cwd=work)
    (work / f"{cn}.key").write_bytes(key.stdout)
    command = ["pki", "--scep", "--url", url, "--in", f"{cn}.key", "--dn", f"CN={cn}", "--password", password,
               "--cacert-enc", "ra.pem", "--cacert-sig", "ca.pem", "--cipher", "des3", "--outform", "pem", *extra]
    if not wait:
        return subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, cwd=work, capture_output=True, timeout=120)


def test_pages_are_refused_without_a_session(browser, srv):
    base = f"http://127.0.0.1:{srv.port}"
    for page in ("/admin/", "/admin/certs", "/admin/requests", "/admin/otp", "/admin/log"):
        browser.get(base + page)
        assert "/admin/login?next=" in browser.current_url, page
    assert browser.get_cookie("scepd_console") is None
    shot(browser, "login")


def test_sign_in_keeps_a_secure_httponly_strict_cookie(browser, srv):
    sign_in(browser, f"http://127.0.0.1:{srv.port}", OPERATOR)
    cookie = browser.get_cookie("scepd_console")
    # Chromium keeps a Secure cookie from http://127.0.0.1: a secure context.
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"


def test_an_otp_from_the_console_enrolls_strongswan(browser, srv, strongswan, instance, tmp_path):
    browser.get(f"http://127.0.0.1:{srv.port}/admin/otp")
    browser.find_element(by("CSS_SELECTOR"), "main form button").click()
    password = browser.find_element(by("ID"), "otp").text
    assert re.fullmatch(r"[0-9a-f]{32}", password) and "It expires at" in browser.page_source
    shot(browser, "otp")
    enrolled = strongswan_enroll(strongswan, srv.url, "vpn-gateway-01", password)
    assert enrolled.returncode == 0, enrolled.stderr.decode()
    assert openssl_verify(instance / "ca.pem", enrolled.stdout, tmp_path).returncode == 0
    (strongswan / "vpn-gateway-01.pem").write_bytes(enrolled.stdout)
    again = strongswan_enroll(strongswan, srv.url, "vpn-gateway-02", password)
    assert again.returncode != 0  # once only


def test_approving_in_the_console_lets_strongswan_collect_its_certificate(browser, srv, strongswan, instance, tmp_path):
    # A second server on the same database, where strongSwan's requests need approval.
    manual = RunningServer(instance, env={"SCEPD_TEMPLATE_MAPPING_GENERALPURPOSETEMPLATE": "Manual"})
    try:
        polling = strongswan_enroll(strongswan, manual.url, "laptop-0042", CHALLENGE, "--interval", "1",
                                    "--maxpolltime", "90", wait=False)
        deadline = time.monotonic() + 30
        while "laptop-0042" not in browser.page_source and time.monotonic() < deadline:
            time.sleep(0.5)
            browser.get(f"http://127.0.0.1:{srv.port}/admin/requests")
        shot(browser, "requests")
        row = browser.find_element(by("XPATH"), "//tr[td[contains(., 'laptop-0042')]]")
        row.find_element(by("XPATH"), ".//button[text()='Approve']").click()
        assert "Approved" in browser.find_element(by("CSS_SELECTOR"), ".notice").text
        cert, stderr = polling.communicate(timeout=90)
        assert polling.returncode == 0, stderr.decode()
        assert openssl_verify(instance / "ca.pem", cert, tmp_path).returncode == 0
    finally:
        manual.stop()


def test_revoking_in_the_console_puts_the_certificate_on_the_crl(browser, srv, strongswan, tmp_path):
    cert = x509.load_pem_x509_certificate((strongswan / "vpn-gateway-01.pem").read_bytes())
    base = f"http://127.0.0.1:{srv.port}"
    browser.get(f"{base}/admin/certs")
    browser.find_element(by("ID"), "q").send_keys("vpn-gateway")
    browser.find_element(by("CSS_SELECTOR"), "form.filters button").click()
    # The serial's link is on the unfiltered list too: wait for the search's page, not that one.
    assert _wait(browser, lambda: "q=vpn-gateway" in browser.current_url), browser.current_url
    shot(browser, "certs")
    serial = format(cert.serial_number, "x")
    browser.find_element(by("LINK_TEXT"), serial).click()
    assert _wait(browser, lambda: browser.current_url.endswith(f"/admin/certs/{serial}")), browser.current_url
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(by("ID"), "reason")).select_by_value("keyCompromise")
    shot(browser, "certificate")
    browser.find_element(by("CSS_SELECTOR"), "form.revoke button").click()
    assert "Revoked 1 certificate" in browser.find_element(by("CSS_SELECTOR"), ".notice").text
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value
    (tmp_path / "ca.crl").write_bytes(httpx.get(cdp).content)
    text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "ca.crl"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    # openssl prints a serial in whole bytes (a leading 0 for an odd count of hex digits): read
    # the list itself for the serial, openssl's text for the reason as an administrator sees it.
    revoked = x509.load_der_x509_crl((tmp_path / "ca.crl").read_bytes()).get_revoked_certificate_by_serial_number(
        cert.serial_number)
    assert revoked is not None and revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        is x509.ReasonFlags.key_compromise
    assert "Key Compromise" in text


def test_a_form_without_its_csrf_token_is_refused(browser, srv):
    browser.get(f"http://127.0.0.1:{srv.port}/admin/otp")
    # WebDriver's script runs outside the page's CSP: it plays the forged form of another site.
    browser.execute_script("document.querySelector('main form input[name=csrf_token]').remove()")
    browser.find_element(by("CSS_SELECTOR"), "main form button").click()
    assert _wait(browser, lambda: "CsrfTokenInvalid" in browser.page_source), browser.page_source[:2000]
    assert not browser.find_elements(by("ID"), "otp")


def test_the_overview_and_the_log_show_what_happened(browser, srv, strongswan):
    wrong = strongswan_enroll(strongswan, srv.url, "printer-17", "not-the-challenge")
    assert wrong.returncode != 0
    base = f"http://127.0.0.1:{srv.port}"
    browser.get(f"{base}/admin/")
    assert browser.find_element(by("CSS_SELECTOR"), "svg.chart rect.success")
    assert "ChallengePasswordIncorrect" in browser.find_element(by("CSS_SELECTOR"), "ul.legend").text
    shot(browser, "overview")
    browser.get(f"{base}/admin/log?failures=1")
    assert "Remedy: Use the static challenge" in browser.page_source
    shot(browser, "log")


def test_a_viewer_cannot_approve(browser, srv, instance):
    sign_out(browser)
    base = f"http://127.0.0.1:{srv.port}"
    sign_in(browser, base, VIEWER)
    with ScepClient(srv.url) as client:
        pending = client.enroll(new_key(), name("kiosk-7"), challenge=CHALLENGE, key_usage=ENCRYPT_ONLY)
    assert pending.status is PkiStatus.PENDING
    browser.get(f"{base}/admin/requests")
    assert "kiosk-7" in browser.page_source and not browser.find_elements(by("XPATH"), "//button[text()='Approve']")
    token = browser.find_element(by("CSS_SELECTOR"), "form.signout input[name=csrf_token]").get_attribute("value")
    tid = pending.transaction_id
    # The viewer's own session and token, on a form the page does not offer.
    browser.execute_script(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/admin/requests/approve';"
        "for (const [k, v] of [['csrf_token', arguments[0]], ['transaction_id', arguments[1]]]) {"
        "  const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }"
        "document.body.appendChild(f); f.submit();", token, tid)
    assert _wait(browser, lambda: "RoleNotAllowed" in browser.page_source), browser.page_source[:2000]
    record = json.loads(run_scepd("requests", "show", tid, "--dir", str(instance)).stdout)
    assert record["status"] == "pending"
