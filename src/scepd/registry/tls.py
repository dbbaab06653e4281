"""HTTPS for `scepd serve`: the server certificate's files in the instance.

[server] tls = "self": a certificate for [server] tls_names, issued by the instance's CA and
kept in tls/server.pem and tls/server.key (0600). It is issued again at start when it is
missing, unreadable, not the CA's, not for the configured names or past two thirds of its
life, and by `SelfTlsRenewer` while serving (each worker re-reads the files when they
change). [server] tls_cert/tls_key: the operator's files, which scepd only checks.
`check_tls` is what start-up and `scepd doctor` say about either.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scepd.ca.authority import CertificateAuthority
from scepd.ca.keys import KeyPair, load_key
from scepd.ca.templates import Template
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol.csr import parse_csr
from scepd.registry.checks import FAIL, PASS, WARN, CheckResult
from scepd.registry.config import ServerConfig
from scepd.registry.instance import Instance

log = logging.getLogger("scepd.tls")

# Short enough that a renewal is routine (as ACME's 90 days), long enough to survive a
# month of the server being down.
SELF_VALIDITY_DAYS = 90
RENEW_AT = 2 / 3  # of its life: renewed when less than a third remains
EXPIRY_WARNING = dt.timedelta(days=14)
WILDCARD_HOSTS = ("", "0.0.0.0", "::")

# What the self-issued certificate is: a TLS server's (serverAuth), its names in the SAN.
TLS_TEMPLATE = Template(
    name="scepd TLS server",
    validity_days=SELF_VALIDITY_DAYS,
    key_usage=("digitalSignature", "keyEncipherment"),
    extended_key_usage=("serverAuth",),
    san="require",
)


def tls_names(server: ServerConfig) -> list[str]:
    """The names the server certificate must cover: [server] tls_names, else public_url's
    host, else host (on a wildcard address: this machine's name and localhost)."""
    if server.tls_names:
        return list(server.tls_names)
    host = urlsplit(server.public_url).hostname if server.public_url else server.host
    if host in WILDCARD_HOSTS:
        return [socket.gethostname(), "localhost"]
    return [host]


def general_name(text: str) -> x509.GeneralName:
    """An IP address as an iPAddress SAN, anything else as a dNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return x509.DNSName(text.lower())


def _dns_matches(pattern: str, name: str) -> bool:
    """RFC 6125: a wildcard stands for exactly one left-most label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def uncovered(cert: x509.Certificate, names: list[str]) -> list[str]:
    """The names in `names` that `cert`'s subjectAltName does not cover."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return list(names)
    dns, ips = san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)
    missing = []
    for name in names:
        wanted = general_name(name)
        if isinstance(wanted, x509.IPAddress):
            covered = wanted.value in ips
        else:
            covered = any(_dns_matches(p, wanted.value) for p in dns)
        if not covered:
            missing.append(name)
    return missing


def renewal_due(cert: x509.Certificate, now: dt.datetime) -> bool:
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return now >= cert.not_valid_before_utc + life * RENEW_AT


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole or not at all (a worker may read it at any moment), `mode` from
    the moment the file exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def issue_self(instance: Instance, ca: CertificateAuthority) -> x509.Certificate:
    """A new key and server certificate for tls_names from `ca`, written to tls/ (the key
    first: a worker that reads the new key with the old certificate retries, see
    server/tls.py). The chain file holds the certificate and then the CA's."""
    names = tls_names(instance.config.server)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .add_extension(x509.SubjectAlternativeName([general_name(n) for n in dict.fromkeys(names)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Not in the store (issued at start, outside any enrollment): no OCSP URL, see ca.issue.
    cert = ca.issue(parse_csr(csr.public_bytes(serialization.Encoding.DER)), TLS_TEMPLATE, ocsp=False)
    cert_name, key_name = instance.config.server.tls_files
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _replace(instance.path(key_name), pem_key, 0o600)
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.certificate.public_bytes(serialization.Encoding.PEM)
    _replace(instance.path(cert_name), chain, 0o644)
    return cert


def _load(instance: Instance) -> tuple[KeyPair | None, str]:
    """The configured certificate and key, or None and why not."""
    cert_name, key_name = instance.config.server.tls_files
    cert_path, key_path = instance.path(cert_name), instance.path(key_name)
    for path in (cert_path, key_path):
        if not path.exists():
            return None, f"{path} is missing"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        return None, f"{cert_path} is not a PEM certificate ({exc})"
    try:
        key = load_key(key_path)
    except TypeError:
        return None, f"{key_path} is encrypted: scepd reads the TLS key without a passphrase (keep it mode 600)"
    except ValueError as exc:
        return None, f"{key_path} is not a PEM private key ({exc})"
    pair = KeyPair(cert, key)
    if not pair.key_matches_certificate():
        return None, f"{key_path} does not belong to {cert_path}"
    return pair, ""


def reissue_reason(instance: Instance, ca: CertificateAuthority, now: dt.datetime) -> str | None:
    """Why the self-issued certificate must be issued anew; None when it is fine."""
    pair, why = _load(instance)
    if pair is None:
        return why
    cert = pair.certificate
    if not ca.issued(cert):
        return "it was not issued by the active CA"
    missing = uncovered(cert, tls_names(instance.config.server))
    if missing:
        return f"it does not cover {', '.join(missing)}"
    if renewal_due(cert, now):
        return f"less than a third of its life is left (expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z)"
    return None


def ensure_self_tls(instance: Instance, ca: CertificateAuthority, now: dt.datetime | None = None) -> str | None:
    """Issue the self certificate when it must be; what was done, or None."""
    reason = reissue_reason(instance, ca, now or ca.clock.now())
    if reason is None:
        return None
    cert = issue_self(instance, ca)
    return (f"issued {instance.config.server.tls_files[0]} for {', '.join(tls_names(instance.config.server))} "
            f"until {cert.not_valid_after_utc:%Y-%m-%d}: {reason}")


def check_tls(instance: Instance, ca: CertificateAuthority | None, repair: bool = False,
              clock: Clock = SYSTEM_CLOCK) -> list[CheckResult]:
    """The TLS files: present, key and certificate together, not expiring within 14 days,
    the names covered. With `repair`, a self-issued certificate that needs it is issued."""
    server = instance.config.server
    if not server.tls_enabled:
        return []
    own = server.tls == "self"
    if own and repair and ca is not None:
        done = ensure_self_tls(instance, ca, clock.now())
        if done:
            return [CheckResult("tls", WARN, done)]
    fix = ("scepd doctor --fix, or restart scepd serve (either issues a new tls/server.pem)" if own
           else "install a current certificate and its key at [server] tls_cert / tls_key")
    pair, why = _load(instance)
    if pair is None:
        return [CheckResult("tls", FAIL, why, fix)]
    cert, now = pair.certificate, clock.now()
    results = []
    if cert.not_valid_after_utc <= now:
        results.append(CheckResult("tls.validity", FAIL, f"the server certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}", fix))
    elif cert.not_valid_after_utc - now < EXPIRY_WARNING:
        results.append(CheckResult("tls.validity", WARN, f"the server certificate expires on {cert.not_valid_after_utc:%Y-%m-%d}", fix))
    missing = uncovered(cert, tls_names(server))
    if missing:
        results.append(CheckResult("tls.names", FAIL, f"the server certificate does not cover {', '.join(missing)}",
                                   fix if own else "issue one whose subjectAltName has them, or set [server] tls_names"))
    if own and ca is not None and not ca.issued(cert):
        results.append(CheckResult("tls.issuer", WARN, "the server certificate is not from the active CA", fix))
    return results or [CheckResult("tls", PASS, f"{server.tls_files[0]} covers {', '.join(tls_names(server))}, "
                                                f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")]


class SelfTlsRenewer:
    """Renews the self-issued certificate while the server runs: looks every `interval`
    seconds (a stat; the certificate is read again only when the file changed) and issues a
    new one once less than a third of its life is left. `authority` opens the instance and
    its active CA as they are then (a CA rollover may have happened since the start)."""

    RETRY_SECONDS = 60.0

    def __init__(self, instance: Instance, authority: Callable[[], tuple[Instance, CertificateAuthority]],
                 interval: float = 5.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self._path = instance.path(instance.config.server.tls_files[0])
        self._authority = authority
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scepd-tls-renewer", daemon=True)
        self._seen: tuple[int, x509.Certificate | None] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _current(self) -> x509.Certificate | None:
        try:
            stamp = self._path.stat().st_mtime_ns
        except OSError:
            return None
        if self._seen is None or self._seen[0] != stamp:
            try:
                self._seen = (stamp, x509.load_pem_x509_certificate(self._path.read_bytes()))
            except ValueError:
                self._seen = (stamp, None)
        return self._seen[1]

    def _run(self) -> None:
        wait = self._interval
        while not self._stop.wait(wait):
            wait = self._interval
            cert = self._current()
            if cert is not None and not renewal_due(cert, self._clock.now()):
                continue
            try:
                instance, ca = self._authority()
                done = ensure_self_tls(instance, ca, self._clock.now())
                if done:
                    log.warning("%s", done)
            except Exception:
                log.exception("could not renew the TLS server certificate; trying again in %g s", self.RETRY_SECONDS)
                wait = self.RETRY_SECONDS
