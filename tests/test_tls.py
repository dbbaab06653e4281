"""Built-in HTTPS (`scepd serve --tls self`, `--tls-cert/--tls-key`) and the plain-HTTP port
beside it, through real sockets: the certificate the server presents, who trusts it, what
each port serves, TLS 1.1 refused, renewal at start and while serving."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from scepd.ca.authority import CertificateAuthority
from scepd.clock import FixedClock
from scepd.registry.checks import FAIL, PASS, WARN
from scepd.registry.config import ConfigError, load_config
from scepd.registry.instance import Instance, create_instance, load_key_material
from scepd.registry.tls import check_tls, issue_self, renewal_due
from tests.conftest import CHALLENGE, SCEPD, free_port, openssl_verify, run_scepd

NAMES = "localhost,127.0.0.1"


class TlsServer:
    """`scepd serve` with HTTPS on `port` (and plain HTTP on `http_port`, when asked)."""

    def __init__(self, directory: Path, *args: str, http: bool = False, env: dict | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.http_port = free_port() if http else 0
        self.url = f"https://127.0.0.1:{self.port}"
        self.plain_url = f"http://127.0.0.1:{self.http_port}"
        command = [*SCEPD, "serve", "--dir", str(directory), "--port", str(self.port), *args]
        if http:
            command += ["--http-port", str(self.http_port)]
        self.stderr_path = directory / "serve.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                        env={**os.environ, "SCEPD_SERVER_TLS_NAMES": NAMES, **(env or {})})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"scepd serve exited: {self.stderr_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", verify=False, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"scepd serve did not come up: {self.stderr_path.read_text()}")

    def served_certificate(self) -> x509.Certificate:
        """What a new handshake gets."""
        return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", self.port)).encode())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._stderr.close()


def _instance(tmp_path: Path, name: str = "tls") -> Path:
    directory = tmp_path / name
    create_instance(directory, ca_subject="CN=scepd TLS Test CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    return directory


@pytest.fixture(scope="module")
def self_tls(tmp_path_factory):
    directory = _instance(tmp_path_factory.mktemp("self-tls"))
    server = TlsServer(directory, "--tls", "self", http=True)
    yield directory, server
    server.stop()


def _sans(cert: x509.Certificate) -> list:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


# --- --tls self ---------------------------------------------------------------------------------


def test_self_tls_presents_a_server_certificate_from_the_ca_for_the_names(self_tls, tmp_path):
    directory, server = self_tls
    served = server.served_certificate()
    on_disk = x509.load_pem_x509_certificate((directory / "tls/server.pem").read_bytes())
    assert served == on_disk
    assert openssl_verify(directory / "ca.pem", (directory / "tls/server.pem").read_bytes(), tmp_path).returncode == 0
    sans = _sans(served)
    assert x509.DNSName("localhost") in sans
    assert x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in sans
    eku = served.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert stat.S_IMODE((directory / "tls/server.key").stat().st_mode) == 0o600
    assert "https://127.0.0.1:" in server.stderr_path.read_text()


def test_openssl_verifies_the_served_chain_and_the_ip(self_tls):
    directory, server = self_tls
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-CAfile", str(directory / "ca.pem"),
         "-verify_return_error", "-verify_ip", "127.0.0.1", "-brief"],
        input="", capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert "Verification: OK" in done.stderr


def test_scep_over_https_with_httpx_and_the_project_client(self_tls, tmp_path):
    directory, server = self_tls
    caps = httpx.get(f"{server.url}/scep?operation=GetCACaps", verify=ssl.create_default_context(cafile=str(directory / "ca.pem")))
    assert caps.status_code == 200 and "POSTPKIOperation" in caps.text
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/healthz")  # the system's roots do not know the instance's CA

    refused = run_scepd("client", "getcacaps", f"{server.url}/scep")
    assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    out = tmp_path / "device.pem"
    enrolled = run_scepd("client", "enroll", f"{server.url}/scep", "--cacert", str(directory / "ca.pem"),
                         "--subject", "CN=over-https", "--challenge", CHALLENGE, "--cert-out", str(out))
    assert enrolled.returncode == 0, enrolled.stderr
    assert x509.load_pem_x509_certificate(out.read_bytes()).subject.rfc4514_string() == "CN=over-https"


# --- the plain-HTTP port ------------------------------------------------------------------------


def test_the_plain_port_serves_scep_and_enrolls(self_tls, tmp_path):
    directory, server = self_tls
    assert httpx.get(f"{server.plain_url}/scep?operation=GetCACert").status_code == 200
    assert httpx.get(f"{server.plain_url}/healthz").text == "ok\n"
    out = tmp_path / "plain.pem"
    enrolled = run_scepd("client", "enroll", f"{server.plain_url}/scep", "--subject", "CN=over-http",
                         "--challenge", CHALLENGE, "--cert-out", str(out))
    assert enrolled.returncode == 0, enrolled.stderr


@pytest.mark.parametrize("path", ["/api/v1/challenges", "/ScepActions/validateRequest", "/admin"])
def test_the_plain_port_refuses_the_apis_and_names_the_https_url(self_tls, path):
    directory, server = self_tls
    # X-Forwarded-Proto from a trusted address would make the scheme https: the guard goes by the port.
    answer = httpx.post(f"{server.plain_url}{path}", json={}, headers={"X-Forwarded-Proto": "https"})
    assert answer.status_code == 403
    assert f"use https://127.0.0.1:{server.port}{path}" in answer.text
    # Over HTTPS the same path reaches its route (which has its own answer, not the guard's).
    over_tls = httpx.post(f"{server.url}{path}", json={}, verify=False)
    assert "plain-HTTP port" not in over_tls.text


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused(self_tls):
    directory, server = self_tls

    def client_context() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # what lets this OpenSSL speak TLS 1.1 at all
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        return context

    # The control: this client does negotiate TLS 1.1 with a server that allows it.
    lenient = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
    lenient.minimum_version = ssl.TLSVersion.TLSv1_1
    lenient.load_cert_chain(directory / "tls/server.pem", directory / "tls/server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    versions = []

    def accept_one():
        conn, _ = listener.accept()
        try:
            with lenient.wrap_socket(conn, server_side=True) as tls:
                versions.append(tls.version())
        except ssl.SSLError as exc:
            versions.append(repr(exc))

    thread = threading.Thread(target=accept_one)
    thread.start()
    with socket.create_connection(listener.getsockname()) as raw, client_context().wrap_socket(raw) as tls:
        assert tls.version() == "TLSv1.1"
    thread.join(5)
    listener.close()
    assert versions == ["TLSv1.1"]

    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", server.port)) as raw, client_context().wrap_socket(raw):
            pass
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        context = client_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with context.wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.2"


# --- the operator's files -----------------------------------------------------------------------


def test_tls_cert_and_key_made_by_openssl(tmp_path):
    directory = _instance(tmp_path)
    cert, key = tmp_path / "own.pem", tmp_path / "own.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    server = TlsServer(directory, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert server.served_certificate() == x509.load_pem_x509_certificate(cert.read_bytes())
        trusted = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"https://localhost:{server.port}/scep?operation=GetCACaps", verify=trusted).status_code == 200
        assert not (directory / "tls").exists()  # nothing issued of its own
    finally:
        server.stop()


def test_a_tls_key_that_is_not_the_certificates_stops_serve(tmp_path):
    directory = _instance(tmp_path)
    cert, key = tmp_path / "own.pem", tmp_path / "other.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "own.key"), "-out", str(cert), "-subj", "/CN=localhost"], check=True, capture_output=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key)],
                   check=True, capture_output=True)
    done = run_scepd("serve", "--dir", str(directory), "--port", str(free_port()), "--tls-cert", str(cert), "--tls-key", str(key))
    assert done.returncode != 0
    assert "FAIL tls" in done.stderr and "does not belong to" in done.stderr


# --- renewal ------------------------------------------------------------------------------------


def _nearly_expired(directory: Path) -> x509.Certificate:
    """A self certificate issued 80 of its 90 days ago, written to tls/."""
    instance = Instance.open(directory, {"SCEPD_SERVER_TLS": "self", "SCEPD_SERVER_TLS_NAMES": NAMES})
    ca = load_key_material(instance).ca
    past = CertificateAuthority(ca.pair, ca.crl_base_url, FixedClock(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=80)))
    return issue_self(instance, past)


def test_a_nearly_expired_self_certificate_is_renewed_at_start(tmp_path):
    directory = _instance(tmp_path)
    old = _nearly_expired(directory)
    assert renewal_due(old, dt.datetime.now(dt.timezone.utc))
    server = TlsServer(directory, "--tls", "self")
    try:
        served = server.served_certificate()
        assert served.serial_number != old.serial_number
        assert served.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=80)
        assert "less than a third of its life is left" in server.stderr_path.read_text()
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_while_serving_a_due_certificate_is_renewed_and_served_without_a_restart(tmp_path, workers):
    """The renewer (in the supervisor) issues the new files; each worker loads them into its
    live SSL context, and new handshakes on every port get them."""
    directory = _instance(tmp_path)
    server = TlsServer(directory, "--tls", "self", "--workers", str(workers), http=True)
    try:
        first = server.served_certificate()
        assert httpx.get(f"{server.plain_url}/scep?operation=GetCACaps").status_code == 200
        stale = _nearly_expired(directory)  # as if 80 days had passed
        deadline = time.monotonic() + 30
        served = first
        while time.monotonic() < deadline:
            served = server.served_certificate()
            if served.serial_number not in (first.serial_number, stale.serial_number):
                break
            time.sleep(0.5)
        assert served.serial_number not in (first.serial_number, stale.serial_number), "not renewed within 30 s"
        assert served.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=80)
        assert served == x509.load_pem_x509_certificate((directory / "tls/server.pem").read_bytes())
        trusted = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        for _ in range(4):  # with two workers, each answers some of these
            assert httpx.get(f"{server.url}/healthz", verify=trusted).status_code == 200
            assert httpx.get(f"{server.plain_url}/healthz").status_code == 200
    finally:
        server.stop()


# --- time limits on the TLS port ----------------------------------------------------------------


def test_a_connection_that_never_completes_a_handshake_or_a_request_is_closed(tmp_path):
    directory = _instance(tmp_path)
    server = TlsServer(directory, "--tls", "self", env={"SCEPD_SERVER_HEADER_TIMEOUT": "1s"})
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.settimeout(8)
            started = time.monotonic()
            assert raw.recv(100) == b""  # no ClientHello: closed by the handshake timeout
            assert time.monotonic() - started < 4
        context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        with socket.create_connection(("127.0.0.1", server.port)) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.settimeout(8)
            started = time.monotonic()
            tls.sendall(b"GET /scep")  # and no more
            try:
                data = tls.recv(100)
            except (ssl.SSLEOFError, ConnectionResetError):  # closed without close_notify
                data = b""
            assert data == b""
            assert time.monotonic() - started < 4
    finally:
        server.stop()


# --- configuration and doctor -------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    ({"SCEPD_SERVER_HTTP_PORT": "8081"}, "http_port is the plain-HTTP port beside HTTPS"),
    ({"SCEPD_SERVER_TLS": "self", "SCEPD_SERVER_TLS_CERT": "a.pem", "SCEPD_SERVER_TLS_KEY": "a.key"}, "leave tls_cert and tls_key empty"),
    ({"SCEPD_SERVER_TLS_CERT": "a.pem"}, "tls_cert and tls_key go together"),
    ({"SCEPD_SERVER_TLS": "yes"}, 'tls must be "self" or empty'),
    ({"SCEPD_SERVER_TLS": "self", "SCEPD_SERVER_HTTP_PORT": "8080"}, "http_port must be a port other than port"),
])
def test_tls_settings_that_do_not_go_together_are_refused(tmp_path, settings, message):
    directory = _instance(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_config(directory / "scepd.toml", settings)


def test_doctor_checks_the_tls_files_and_names_the_fix(tmp_path):
    directory = _instance(tmp_path)
    settings = {"SCEPD_SERVER_TLS": "self", "SCEPD_SERVER_TLS_NAMES": NAMES}
    instance = Instance.open(directory, settings)
    ca = load_key_material(instance).ca

    missing = check_tls(instance, ca)
    assert [r.status for r in missing] == [FAIL] and "is missing" in missing[0].reason and "scepd doctor --fix" in missing[0].fix
    repaired = check_tls(instance, ca, repair=True)
    assert repaired[0].status == WARN and "issued tls/server.pem" in repaired[0].reason
    assert [r.status for r in check_tls(instance, ca)] == [PASS]

    soon = FixedClock(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=80))
    assert [(r.name, r.status) for r in check_tls(instance, ca, clock=soon)] == [("tls.validity", WARN)]
    other = Instance.open(directory, {**settings, "SCEPD_SERVER_TLS_NAMES": "scep.example.com"})
    names = check_tls(other, ca)
    assert [(r.name, r.status) for r in names] == [("tls.names", FAIL)] and "scep.example.com" in names[0].reason

    (directory / "tls/server.key").unlink()
    (directory / "tls/server.key").write_bytes((directory / "rp/encryption.key").read_bytes())
    wrong = check_tls(instance, ca)
    assert wrong[0].status == FAIL and "does not belong to" in wrong[0].reason

    doctor = run_scepd("doctor", "--dir", str(directory), env=settings)
    assert "tls" in doctor.stdout + doctor.stderr and "does not belong to" in doctor.stdout + doctor.stderr


def test_certificates_name_plain_http_for_crls_and_ocsp_when_there_is_a_plain_port(tmp_path):
    """A relying party checking a TLS certificate cannot first need TLS to fetch its CRL
    (RFC 5280 4.2.1.13): with a plain port beside HTTPS, CDP and AIA name that port."""
    from scepd.registry.config import update_config_file

    d = tmp_path / "pub"
    create_instance(d, key_spec="ec:p256")
    update_config_file(d / "scepd.toml", {"server": {"tls": "self", "port": 8443, "http_port": 8080}})
    ca = load_key_material(Instance.open(d)).ca
    assert ca.crl_url.startswith("http://127.0.0.1:8080/crl/")
    assert ca.public_url == "http://127.0.0.1:8080"
    update_config_file(d / "scepd.toml", {"server": {"public_url": "https://scep.example"}})
    assert load_key_material(Instance.open(d)).ca.crl_url.startswith("https://scep.example/crl/")
    update_config_file(d / "scepd.toml", {"server": {"public_url": "", "http_port": 0}})
    assert load_key_material(Instance.open(d)).ca.crl_url.startswith("https://127.0.0.1:8443/crl/")


# --- reloading the files ------------------------------------------------------------------------


def _pair(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", f"/CN={name}"],
                   check=True, capture_output=True)
    return cert, key


def _served_by(context: ssl.SSLContext) -> x509.Certificate:
    """The certificate a handshake with `context` presents."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept_one():
        conn, _ = listener.accept()
        with contextlib.suppress(OSError, ssl.SSLError), context.wrap_socket(conn, server_side=True):
            pass

    thread = threading.Thread(target=accept_one)
    thread.start()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(listener.getsockname()) as raw, client.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    thread.join(5)
    listener.close()
    return x509.load_der_x509_certificate(der)


def test_a_reload_loads_the_bytes_it_checked_even_when_a_file_changes_meanwhile(tmp_path, monkeypatch):
    from scepd.server.tls import ContextReloader, TlsFiles, server_context

    live_cert, live_key = tmp_path / "server.pem", tmp_path / "server.key"
    first, renewed, later = _pair(tmp_path, "first"), _pair(tmp_path, "renewed"), _pair(tmp_path, "later")
    for source, target in zip(first, (live_cert, live_key), strict=True):
        target.write_bytes(source.read_bytes())
    files = TlsFiles(live_cert, live_key)
    context = server_context(files)
    reloader = ContextReloader(context, files)
    for source, target in zip(renewed, (live_cert, live_key), strict=True):
        target.write_bytes(source.read_bytes())
    os.utime(live_cert, ns=(1, time.time_ns() + 10**9))

    class RenewedMeanwhile(ssl.SSLContext):
        """The scratch context: once it has taken the renewed pair, the next renewal writes its key."""

        def load_cert_chain(self, *args, **kwargs):
            super().load_cert_chain(*args, **kwargs)
            live_key.write_bytes(later[1].read_bytes())

    monkeypatch.setattr(ssl, "SSLContext", RenewedMeanwhile)
    assert reloader.check() is True  # did not raise, and did not pair the renewed certificate with the later key
    monkeypatch.undo()
    assert _served_by(context) == x509.load_pem_x509_certificate(renewed[0].read_bytes())
    live_cert.write_bytes(b"not a certificate")  # a reload that fails keeps what is served
    os.utime(live_cert, ns=(1, time.time_ns() + 2 * 10**9))
    assert reloader.check() is False
    assert _served_by(context) == x509.load_pem_x509_certificate(renewed[0].read_bytes())


def test_a_reload_that_raises_does_not_end_the_serve_loop(caplog):
    import asyncio

    import uvicorn

    from scepd.server.run import ScepdServer

    class Broken:
        def check(self):
            raise RuntimeError("a bug in a reload")

    server = ScepdServer(uvicorn.Config(app=None))
    server._reloader = Broken()
    with caplog.at_level("ERROR", logger="scepd.server"):
        assert asyncio.run(server.on_tick(20)) is False  # the loop goes on
    assert "not reloaded" in caplog.text


def test_the_console_over_https_asks_browsers_to_stay_on_https(self_tls):
    _directory, server = self_tls
    answer = httpx.get(f"{server.url}/admin/login", verify=False)
    assert answer.status_code == 200 and answer.headers["strict-transport-security"] == "max-age=31536000"
    redirect = httpx.get(f"{server.url}/admin/", verify=False)
    assert redirect.status_code == 303 and "strict-transport-security" in redirect.headers
