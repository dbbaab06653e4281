"""The TLS side of `scepd serve`: the server's SSL context (TLS 1.2 at least), its reload
when the certificate or key files change (on the live context: new handshakes get the new
certificate without a restart, open connections keep theirs), and what the plain-HTTP port
beside HTTPS may serve (PlainHttpGuard)."""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.responses import Response

from scepd.server.framing import TEXT
from scepd.server.scep import SCEP_PATHS

log = logging.getLogger("scepd.server")


@dataclass(frozen=True)
class TlsFiles:
    """The PEM certificate (with its chain after it) and the unencrypted key a worker serves."""

    certificate: Path
    key: Path

    def stamp(self) -> tuple:
        stamps = []
        for path in (self.certificate, self.key):
            try:
                stamps.append(path.stat().st_mtime_ns)
            except OSError:
                stamps.append(None)
        return tuple(stamps)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """Python's server defaults (OpenSSL's cipher list at security level 2, no compression,
    no renegotiation) with TLS 1.0 and 1.1 refused: RFC 8996 deprecates both."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.certificate, files.key)
    return context


class ContextReloader:
    """Loads changed files into the live context. Both files are read once, and the bytes
    read are what is tried on a scratch context and then loaded into the live one: a file
    that changes in between (a renewal writes the key a moment before the certificate) cannot
    pair a new certificate with an old key in the live context, and a failed
    load_cert_chain on the live context (which can leave the new certificate with the old
    key) cannot happen for a pair the scratch context took. A pair that does not load is
    retried at the next look, and the context keeps serving the pair it has; nothing a
    reload meets ends the server."""

    def __init__(self, context: ssl.SSLContext, files: TlsFiles) -> None:
        self.context = context
        self.files = files
        self._stamp = files.stamp()
        self._complained: tuple | None = None

    def check(self) -> bool:
        """Reload when the files changed; True when the context now serves new files."""
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return False
        try:
            pair = (self.files.certificate.read_bytes(), self.files.key.read_bytes())
            with _as_files(pair) as (certificate, key):
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate, key)
                self.context.load_cert_chain(certificate, key)
        except Exception as exc:  # noqa: BLE001 - the server goes on with the pair it has
            if self._complained != stamp:
                self._complained = stamp
                log.warning("kept the TLS certificate being served: %s and %s do not load together yet (%s)",
                            self.files.certificate, self.files.key, exc)
            return False
        self._stamp = stamp
        log.warning("serving the TLS certificate in %s anew", self.files.certificate)
        return True


@contextlib.contextmanager
def _as_files(contents: tuple[bytes, ...]):
    """Paths with `contents`, for load_cert_chain, which reads files only: memory files on
    Linux (memfd, never on a disk; /proc/self/fd/N opens one anew from its start), else
    files in a private temporary directory, removed afterwards."""
    if hasattr(os, "memfd_create"):
        fds = []
        try:
            for data in contents:
                fds.append(os.memfd_create("scepd-tls", os.MFD_CLOEXEC))
                with os.fdopen(os.dup(fds[-1]), "wb") as f:
                    f.write(data)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="scepd-tls-") as directory:  # mode 0700
        paths = [Path(directory) / str(i) for i in range(len(contents))]
        for path, data in zip(paths, contents, strict=True):
            path.write_bytes(data)
        yield [str(p) for p in paths]


# What devices that cannot do HTTPS need, and nothing that carries a secret: SCEP, the
# health check, and what relying parties fetch (CRLs, OCSP, CA certificates), which are signed
# and, by RFC 5280 and RFC 6960, fetched over plain HTTP.
PLAIN_HTTP_PATHS = frozenset((*SCEP_PATHS, "/healthz"))
PLAIN_HTTP_PREFIXES = ("/crl/", "/ocsp", "/ca/")


def served_over_plain_http(path: str) -> bool:
    return path in PLAIN_HTTP_PATHS or path.startswith(PLAIN_HTTP_PREFIXES)


class PlainHttpGuard:
    """On the plain-HTTP port (`plain_port`, the local port a connection arrived at: not the
    scheme, which X-Forwarded-Proto from a trusted address could set), everything but the
    PLAIN_HTTP paths is refused with 403 and the HTTPS address to use instead: the APIs'
    bearer tokens and the console's sessions must not cross the network in clear."""

    def __init__(self, app, plain_port: int, https_port: int, https_base: str = "") -> None:
        self.app = app
        self.plain_port = plain_port
        self.https_port = https_port
        self.https_base = https_base  # public_url when it is an https URL

    async def __call__(self, scope, receive, send) -> None:
        server = scope.get("server")
        if scope["type"] != "http" or not server or server[1] != self.plain_port or served_over_plain_http(scope["path"]):
            await self.app(scope, receive, send)
            return
        text = (f"{scope['path'][:200]} is served over HTTPS only, not on this plain-HTTP port: "
                f"use {self._https_url(scope)}{scope['path'][:200]}\n")
        await Response(text, status_code=403, media_type=TEXT, headers={"Connection": "close"})(scope, receive, send)

    def _https_url(self, scope) -> str:
        if self.https_base:
            return self.https_base
        host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
        try:
            name = urlsplit(f"//{host}").hostname if host else None
        except ValueError:
            name = None
        name = name or scope["server"][0]
        shown = f"[{name}]" if ":" in name else name
        return f"https://{shown}:{self.https_port}"


__all__ = ["ContextReloader", "PlainHttpGuard", "TlsFiles", "served_over_plain_http", "server_context"]
