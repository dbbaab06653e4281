"""Shared fixtures: instances on disk, a real `scepd serve` process on a loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from scepd.registry.instance import create_instance

VECTORS = Path(__file__).parent / "vectors"
SCEPD = [sys.executable, "-m", "scepd.cli"]
CHALLENGE = "s3cret-static-challenge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_scepd(*args: str, env: dict | None = None, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SCEPD, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=check,
    )


class RunningServer:
    def __init__(self, directory: Path, env: dict | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/scep"
        self.stderr_path = directory / "serve.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            [*SCEPD, "serve", "--dir", str(directory), "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"scepd serve exited: {self.stderr_path.read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("scepd serve did not come up within 30 s")

    def alive(self) -> bool:
        return self.process.poll() is None and httpx.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200

    def log_lines(self) -> list[str]:
        path = self.directory / "scepd.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._stderr.close()


@pytest.fixture(scope="session")
def instance_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("instance")
    create_instance(directory, ca_subject="CN=scepd Test CA,O=scepd tests", key_spec="rsa:2048", static_challenge=CHALLENGE)
    return directory


@pytest.fixture(scope="session")
def server(instance_dir) -> RunningServer:
    srv = RunningServer(instance_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def ca_pem(instance_dir) -> Path:
    return instance_dir / "ca.pem"


def name(cn: str) -> x509.Name:
    """x509.Name with one CN."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def openssl_verify(ca: Path, cert_pem: bytes, tmp_path: Path) -> subprocess.CompletedProcess:
    cert_path = tmp_path / "issued.pem"
    cert_path.write_bytes(cert_pem)
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert_path)], capture_output=True, text=True
    )


def require_tool(name: str) -> str:
    """The path of a third-party tool the tests need. Under CI a missing tool is a failure
    (make test installs it), elsewhere a skip."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# --- a throwaway PostgreSQL server ------------------------------------------------------------


def _postgres_bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server of its own, on a loopback port, for the session: Debian's
    postgresql package (installed by make test), initdb in a temporary directory. As root it
    runs as the postgres user, since PostgreSQL refuses to run as root."""
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        message = "PostgreSQL's server is not installed (make test installs Debian's postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="scepd-pg-"))
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-U", "scepd", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "start",
                    "-o", f"-p {port} -h 127.0.0.1 -k {data}"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "scepd", "scepd"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://scepd@127.0.0.1:{port}/scepd"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def fresh_postgres(postgres_url) -> str:
    """An empty database of its own on the session's PostgreSQL server."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"
