"""[server] of scepd.toml: where and how scepd listens (ports, workers, limits, HTTPS, the
metrics endpoint) and the URLs it is reached at."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from scepd.registry.durations import ConfigError, parse_duration

# Where [server] tls = "self" keeps the server certificate it issues (the key 0600).
SELF_TLS_CERT = "tls/server.pem"
SELF_TLS_KEY = "tls/server.key"



def parse_cpu_list(text: str) -> list[int]:
    """CPUs as Linux writes them ("0,2-3"), in order, each once."""
    cpus: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            first, dash, last = part.partition("-")
            low, high = int(first), int(last if dash else first)
            if low < 0 or high < low or high - low > 4096:
                raise ValueError
            cpus += [c for c in range(low, high + 1) if c not in cpus]
    except ValueError:
        raise ValueError(f'cpu_affinity must be "", "auto" or a list of CPUs such as "0,2-3", not {text!r}') from None
    return cpus


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Bodies above this get 413 and query strings above it 414 (a pkiMessage is a few KiB).
    max_request_bytes: int = 65536
    workers: int = 1
    # Threads per worker that run enrollments. 0: chosen from the configuration (see
    # `enrollment_threads`); set it when the automatic choice does not suit.
    threads: int = 0
    # The base URL clients and relying parties reach this server at (CRL distribution points
    # are published under it); empty: http://HOST:PORT.
    public_url: str = ""
    # A connection that has not sent a request's complete headers this long after it opened
    # (or after the previous response) is closed, so that slow or stalled clients cannot
    # hold connections open (slowloris).
    header_timeout: str = "10s"
    # HTTPS (docs/tls.md). "self": a certificate from the instance's CA for tls_names, kept in
    # tls/ and renewed before it expires; or tls_cert and tls_key, PEM files of your own.
    tls: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Names and IP addresses the self-issued certificate is for; empty: public_url's host, else host.
    tls_names: tuple[str, ...] = ()
    # With TLS on: a plain-HTTP port beside it, for devices that need one: SCEP, CRLs, /healthz only.
    http_port: int = 0
    # Prometheus's /metrics (docs/metrics.md): 0 serves it on `port`; another port serves it
    # there alone (on `host`, plain HTTP), and not on `port`; -1 serves it nowhere.
    metrics_port: int = 0
    # The SHA-256 (hex) of the bearer token a scrape must present; empty: none is asked for
    # (fine on 127.0.0.1). Its own token, not an API token: a scraper cannot issue challenges.
    metrics_token_sha256: str = ""
    # Each worker process pinned to one CPU (all its threads together): "" leaves it to the
    # operating system; "auto" takes the CPUs scepd may run on, one per worker in turn; or a
    # list of CPUs ("0,2-3"). Measured (docs/performance.md): a worker whose event loop and
    # enrollment threads share one core spends 5 to 15% less CPU per enrollment. Off by
    # default: two instances, or containers on one host, would all pin to the same CPUs.
    cpu_affinity: str = ""

    def __post_init__(self) -> None:
        self._check_metrics()
        if self.cpu_affinity not in ("", "auto"):
            parse_cpu_list(self.cpu_affinity)
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (automatic) or more, not {self.threads}")
        self._check_tls()
        try:
            timeout = parse_duration(self.header_timeout)
        except ConfigError as exc:
            raise ValueError(f"header_timeout: {exc}") from None
        if timeout <= dt.timedelta(0):
            raise ValueError("header_timeout must be longer than 0s")

    def _check_metrics(self) -> None:
        digest = self.metrics_token_sha256
        if digest and (len(digest) != 64 or set(digest.lower()) - set("0123456789abcdef")):
            raise ValueError("metrics_token_sha256 is the token's SHA-256 in hex (printf %s TOKEN | sha256sum)")
        if not -1 <= self.metrics_port <= 65535 or (self.metrics_port > 0 and self.metrics_port == self.port):
            raise ValueError(f"metrics_port must be -1 (off), 0 (on port) or a port other than {self.port}")

    def _check_tls(self) -> None:
        for wrong, reason in (
            (self.tls not in ("", "self"), f'tls must be "self" or empty, not {self.tls!r}'),
            (self.tls == "self" and bool(self.tls_cert or self.tls_key), 'tls = "self" issues its own certificate: leave tls_cert and tls_key empty'),
            (bool(self.tls_cert) != bool(self.tls_key), "tls_cert and tls_key go together"),
            (bool(self.http_port) and not self.tls_enabled, "http_port is the plain-HTTP port beside HTTPS: set tls or tls_cert/tls_key"),
            (not 0 <= self.http_port <= 65535 or (self.http_port and self.http_port == self.port), f"http_port must be a port other than port ({self.port})"),
        ):
            if wrong:
                raise ValueError(reason)

    def worker_cpus(self) -> list[int] | None:
        """The CPUs the workers are pinned to, one each in turn; None: not pinned."""
        if not self.cpu_affinity:
            return None
        if self.cpu_affinity == "auto":
            return sorted(os.sched_getaffinity(0))
        return parse_cpu_list(self.cpu_affinity)

    @property
    def header_timeout_seconds(self) -> float:
        return parse_duration(self.header_timeout).total_seconds()

    @property
    def tls_enabled(self) -> bool:
        return self.tls == "self" or bool(self.tls_cert)

    @property
    def tls_files(self) -> tuple[str, str] | None:
        """(certificate, key), relative to the instance; None without TLS."""
        return (SELF_TLS_CERT, SELF_TLS_KEY) if self.tls == "self" else (self.tls_cert, self.tls_key) if self.tls_cert else None

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls_enabled else 'http'}://{host}:{self.port}"

    @property
    def publication_url(self) -> str:
        """Where relying parties fetch CRLs, CA certificates and OCSP answers (the URLs written
        into every certificate): public_url, else the plain-HTTP port beside HTTPS, else
        base_url. Plain HTTP where there is one, as RFC 5280 (4.2.1.13, 4.2.2.1) advises: a
        relying party checking a TLS certificate cannot first need TLS to fetch its CRL."""
        if self.public_url or not (self.tls_enabled and self.http_port):
            return self.base_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.http_port}"
