"""The store under faults: the database's files private, a locked or full database refused
by name within [database] busy_timeout (and recovered from by itself), CRLs served off the
event loop and re-signed safely by several server processes at once."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import os
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import CHALLENGE, RunningServer, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import event, text
from starlette.testclient import TestClient

from scepd.ca.crl import CrlPublisher
from scepd.client import ScepClient, build_csr
from scepd.client.client import self_signed
from scepd.protocol import FailInfo, MessageType, PkiStatus, enveloped
from scepd.protocol.errors import ERRORS, ErrorCode
from scepd.protocol.message import build_pki_message, parse_pki_message
from scepd.registry.config import update_config_file
from scepd.registry.instance import Instance, create_instance, load_key_material
from scepd.server.app import create_app
from scepd.store import Store, StoreUnavailable
from scepd.wiring import build_services


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def new_instance(directory: Path, *, notified: bool = False) -> Path:
    create_instance(directory, ca_subject="CN=scepd Faults CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    if notified:  # a webhook: every success and failure is queued for it (never delivered here)
        update_config_file(directory / "scepd.toml", {"notifications": {"webhooks": ["http://127.0.0.1:9/unreachable"]}})
    return directory


def enroll(url: str, cn: str, ca=None):
    with ScepClient(url) as client:
        return client.enroll(rsa.generate_private_key(65537, 2048), name(cn), challenge=CHALLENGE, ca=ca)


def ca_key_id(directory: Path) -> str:
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    return ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def crl_url(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.port}/crl/{ca_key_id(server.directory)}.crl"


def log_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []


class DatabaseLock:
    """Another process's `BEGIN EXCLUSIVE` on the SQLite database, until released."""

    def __init__(self, database: Path) -> None:
        self.connection = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        self.connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.connection.execute("COMMIT")
        self.connection.close()


# --- the database's files ---------------------------------------------------------------------


def test_database_and_its_wal_and_shm_are_0600_after_init_and_an_enrollment(tmp_path):
    directory = tmp_path / "instance"
    old_umask = os.umask(0o022)  # the usual one, under which SQLite would create 0644 files
    try:
        run_scepd("init", "--dir", str(directory), "--key", "rsa:2048", "--challenge", CHALLENGE, check=True)
        server = RunningServer(directory)
    finally:
        os.umask(old_umask)
    try:
        assert enroll(server.url, "private-files").status is PkiStatus.SUCCESS
        files = [directory / "scepd.db", directory / "scepd.db-wal", directory / "scepd.db-shm"]
        assert all(f.exists() for f in files), "the server holds the database open: -wal and -shm exist"
        assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
    finally:
        server.stop()


def test_doctor_reports_a_world_readable_database_and_fix_and_serve_tighten_it(tmp_path):
    directory = new_instance(tmp_path / "instance")
    database = directory / "scepd.db"
    database.chmod(0o644)

    report = run_scepd("doctor", "--dir", str(directory))
    assert report.returncode == 1, report.stdout  # a warning: others can read, not write
    line = next(line for line in report.stdout.splitlines() if "database.permissions" in line)
    assert line.startswith("WARN") and f"{database} is mode 644" in line
    assert f"chmod 600 {database}" in report.stdout
    assert mode(database) == 0o644, "doctor without --fix changes nothing"

    database.chmod(0o666)
    report = run_scepd("doctor", "--dir", str(directory))
    assert report.returncode == 2 and "others can write" in report.stdout

    fixed = run_scepd("doctor", "--dir", str(directory), "--fix")
    assert "database.permissions" in fixed.stdout and "set to 600" in fixed.stdout
    assert mode(database) == 0o600

    database.chmod(0o644)
    server = RunningServer(directory)
    try:
        assert mode(database) == 0o600, "serve's start-up checks tighten it"
        assert "WARN database.permissions" in server.stderr_path.read_text()
        assert enroll(server.url, "after-chmod").status is PkiStatus.SUCCESS
        assert {oct(mode(f)) for f in directory.glob("scepd.db*")} == {"0o600"}
    finally:
        server.stop()


# --- a locked database ------------------------------------------------------------------------

BUSY = 2.0  # seconds: [database] busy_timeout of the servers below


def test_locked_database_is_a_named_refusal_within_busy_timeout_and_recovers(tmp_path):
    directory = new_instance(tmp_path / "instance", notified=True)
    server = RunningServer(directory, env={"SCEPD_DATABASE_BUSY_TIMEOUT": f"{BUSY:g}s", "SCEPD_SERVER_THREADS": "4"})
    try:
        with ScepClient(server.url) as client:
            ca = client.get_ca_certs()
        assert enroll(server.url, "before-lock", ca).status is PkiStatus.SUCCESS
        lock = DatabaseLock(directory / "scepd.db")
        try:
            def timed(i):
                started = time.monotonic()
                result = enroll(server.url, f"locked-{i}", ca)
                return result, time.monotonic() - started

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                outcomes = list(pool.map(timed, range(4)))
        finally:
            lock.release()
        for result, elapsed in outcomes:
            assert result.status is PkiStatus.FAILURE and result.fail_info is FailInfo.BAD_REQUEST
            assert result.fail_info_text.startswith("StoreUnavailable: the database is locked"), result.fail_info_text
            # One wait of busy_timeout; the failure notification does not wait a second time.
            assert elapsed < BUSY + 1.5, f"answered after {elapsed:.1f} s"

        # The store recovers by itself: the next enrollment succeeds.
        assert enroll(server.url, "after-lock", ca).status is PkiStatus.SUCCESS

        entries = log_entries(directory / "scepd.log")
        ids = {result.transaction_id for result, _ in outcomes}
        for result, _ in outcomes:
            lines = [e for e in entries if e.get("transaction_id") == result.transaction_id]
            assert len(lines) == 1, lines  # logged once
            assert lines[0]["level"] == "warning" and lines[0]["code"] == "StoreUnavailable"
            assert lines[0]["notification"] == "not queued: the store is unavailable"
            assert lines[0]["remedy"] == ERRORS[ErrorCode.STORE_UNAVAILABLE].remedy
        # Nothing else of the requests warns: one warning a refused request, its own line. (The
        # notification dispatcher has warnings of its own: the webhook is unreachable, and a
        # round during the lock pauses it.)
        warnings = [e for e in entries if e["level"] == "warning" and e["logger"] != "scepd.notifications"]
        assert [e.get("transaction_id") for e in warnings if e.get("transaction_id") not in ids] == [], warnings
        assert len(warnings) == len(ids) == len(outcomes)
        assert not [e for e in entries if e["level"] in ("error", "critical") or "traceback" in e]
        assert "Traceback" not in server.stderr_path.read_text()
        store = Instance.open(directory).open_store()
        try:
            assert all(store.notifications(result.transaction_id) == [] for result, _ in outcomes)
        finally:
            store.dispose()
    finally:
        server.stop()


def _waiting_on_the_lock(server: RunningServer, send) -> tuple[httpx.Response, float]:
    """send() while another process holds the database's write lock: GetCACaps and GetCACert
    answer in under 1 s while it waits (the event loop is free). Its response and duration."""
    lock = DatabaseLock(server.directory / "scepd.db")
    try:
        waited: dict = {}

        def waiting():
            started = time.monotonic()
            waited["response"] = send()
            waited["elapsed"] = time.monotonic() - started

        thread = threading.Thread(target=waiting)
        thread.start()
        time.sleep(0.3)
        for operation in ("GetCACaps", "GetCACert"):
            started = time.monotonic()
            response = httpx.get(server.url, params={"operation": operation}, timeout=30)
            elapsed = time.monotonic() - started
            assert response.status_code == 200
            assert elapsed < 1.0, f"{operation} took {elapsed:.2f} s while a request waited for the lock"
        assert thread.is_alive(), "the request is still waiting for the lock"
        thread.join(30)
    finally:
        lock.release()
    return waited["response"], waited["elapsed"]


def test_crl_fetch_on_a_locked_database_leaves_the_event_loop_free_and_answers_503(tmp_path):
    directory = new_instance(tmp_path / "instance")
    server = RunningServer(directory, env={"SCEPD_DATABASE_BUSY_TIMEOUT": f"{BUSY:g}s"})
    try:
        # No CRL is stored yet, so the fetch must sign and store one: it waits for the lock.
        response, elapsed = _waiting_on_the_lock(server, lambda: httpx.get(crl_url(server), timeout=30))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert response.text.startswith("StoreUnavailable: the CRL cannot be read or re-signed now")
        assert elapsed < BUSY + 1.5

        response = httpx.get(crl_url(server))
        assert response.status_code == 200 and response.headers["content-type"] == "application/pkix-crl"
        x509.load_der_x509_crl(response.content)
        assert not [e for e in log_entries(directory / "scepd.log") if e["level"] == "error"]
    finally:
        server.stop()


def test_validate_request_on_a_locked_database_leaves_the_event_loop_free_and_answers_503(tmp_path):
    """Intune's validateRequest of a one-time password spends it in a unit of work, which
    waits for the lock: the event loop stays free meanwhile, and the answer is the 503 of
    StoreUnavailable (no verdict: ask again later). The password is not spent: the same
    request is accepted once the lock is gone."""
    directory = new_instance(tmp_path / "instance")
    token = run_scepd("registry", "token", "new", "--dir", str(directory)).stdout.strip()
    server = RunningServer(directory, env={"SCEPD_DATABASE_BUSY_TIMEOUT": f"{BUSY:g}s"})
    password = run_scepd("otp", "new", "--dir", str(directory)).stdout.strip()
    key = rsa.generate_private_key(65537, 2048)
    csr = build_csr(key, name("validate-locked"), challenge=password).public_bytes(Encoding.DER)
    body = {"request": {"transactionId": "T-validate-locked", "certificateRequest": base64.b64encode(csr).decode(),
                        "callerInfo": "t"}}

    def validate():
        return httpx.post(f"http://127.0.0.1:{server.port}/ScepActions/validateRequest", json=body,
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)

    try:
        response, elapsed = _waiting_on_the_lock(server, validate)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "StoreUnavailable"
        assert response.json()["errorDescription"].startswith("the database is locked")
        assert response.headers["retry-after"] == "2"  # a busy_timeout later
        # One wait: the verdict's unit of work. The audit record of a call refused because the
        # store did not answer goes to the log only, instead of waiting for the store again.
        assert elapsed < BUSY + 1.5
        audit = [e for e in log_entries(directory / "scepd.log") if e.get("action") == "scep_action.validateRequest"]
        assert audit and audit[0]["stored"] == "no: the store is unavailable"
        assert validate().json() == {"code": "Success", "errorDescription": ""}
        assert not [e for e in log_entries(directory / "scepd.log") if e["level"] == "error" or "traceback" in e]
    finally:
        server.stop()


# --- a full disk ------------------------------------------------------------------------------


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_full_disk_is_a_named_refusal_and_recovers(tmp_path):
    """The real thing: the instance on a tmpfs of 4 MiB, filled up while the server runs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; test_full_database_in_process emulates it")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        directory = new_instance(mount / "instance")
        log_file = tmp_path / "scepd.log"  # off the full file system, so that logging goes on
        server = RunningServer(directory, env={"SCEPD_LOGGING_FILE": str(log_file)})
        try:
            with ScepClient(server.url) as client:
                ca = client.get_ca_certs()
            assert enroll(server.url, "before-full", ca).status is PkiStatus.SUCCESS
            filler = _fill(mount)
            try:
                results = [enroll(server.url, f"full-{i}", ca) for i in range(3)]
            finally:
                filler.unlink()
            for result in results:
                assert result.status is PkiStatus.FAILURE
                assert result.fail_info_text.startswith("StoreUnavailable: the database or its disk is full"), result.fail_info_text
            assert enroll(server.url, "after-full", ca).status is PkiStatus.SUCCESS
            assert not [e for e in log_entries(log_file) if e["level"] == "error" or "traceback" in e]
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _pkcsreq(material, cn: str) -> bytes:
    key = rsa.generate_private_key(65537, 2048)
    csr = build_csr(key, name(cn), challenge=CHALLENGE)
    return build_pki_message(
        message_type=MessageType.PKCS_REQ,
        transaction_id=f"T-{cn}",
        signer_certificate=self_signed(key, name(cn)),
        signer_key=key,
        digest_algorithm="sha256",
        envelope=enveloped.build_enveloped(csr.public_bytes(Encoding.DER), material.ra.certificate, enveloped.ContentCipher.AES_128_CBC),
    )


def test_full_database_in_process(tmp_path, caplog):
    """Emulated where no file system can be filled: SQLite's max_page_count makes a write
    that needs a page beyond the database's current size fail with SQLITE_FULL, as a full
    disk does (the first few may still fit into the free room of the pages it has). The
    requests go through the SCEP route in Starlette's TestClient: each refused one is logged
    once, by its own request line (a warning with the code and its remedy), with no error and
    no traceback."""
    instance = Instance.open(new_instance(tmp_path / "instance", notified=True))
    material = load_key_material(instance)
    store = instance.open_store()
    full = {"on": False}

    @event.listens_for(store.engine, "connect")
    def cap(dbapi_connection, _record):
        if full["on"]:
            size = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
            dbapi_connection.execute(f"PRAGMA max_page_count = {size}")

    services = build_services(instance, store, material=material)
    known = [material.ca.certificate, material.ra.certificate]

    def post(http, cn):
        response = http.post("/scep?operation=PKIOperation", content=_pkcsreq(material, cn))
        assert response.status_code == 200, response.text
        return parse_pki_message(response.content, known)

    try:
        with TestClient(create_app(services, 1 << 20, threads=2)) as http, caplog.at_level(logging.INFO, logger="scepd"):
            full["on"] = True
            store.engine.dispose()  # new connections, capped
            for attempt in range(20):
                reply = post(http, f"emulated-full-{attempt}")
                if reply.pki_status is not PkiStatus.SUCCESS:
                    break
            refused = {reply.transaction_id: reply}
            for i in range(2):  # and the next ones alike
                reply = post(http, f"emulated-full-more-{i}")
                refused[reply.transaction_id] = reply
            records = list(caplog.records)
            for reply in refused.values():
                assert reply.pki_status is PkiStatus.FAILURE
                assert reply.fail_info_text.startswith("StoreUnavailable: the database or its disk is full (SQLITE_FULL")
            # Logged once: the request's own line, per refused request, and nothing else above INFO.
            warnings = [r for r in records if r.levelno >= logging.WARNING]
            assert [(r.levelno, r.name, r.getMessage()) for r in warnings] == [
                (logging.WARNING, "scepd.request", "scep request")] * len(refused), [r.getMessage() for r in warnings]
            assert [r.fields["transaction_id"] for r in warnings] == list(refused)
            for record in warnings:
                assert record.fields["code"] == "StoreUnavailable"
                assert record.fields["remedy"] == ERRORS[ErrorCode.STORE_UNAVAILABLE].remedy
                assert record.fields["notification"] == "not queued: the store is unavailable"
            assert not [r for r in records if r.exc_info]

            full["on"] = False
            store.engine.dispose()
            assert post(http, "emulated-after").pki_status is PkiStatus.SUCCESS
    finally:
        store.dispose()


# --- CRLs from several processes --------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request) -> dict:
    if request.param == "sqlite":
        return {}
    return {"SCEPD_DATABASE_URL": request.getfixturevalue("fresh_postgres")}


def test_two_servers_racing_to_re_sign_the_crl_all_answer_200_with_unique_numbers(tmp_path, database_env):
    directory = new_instance(tmp_path / "instance")
    env = {**database_env, "SCEPD_CRL_VALIDITY": "2s", "SCEPD_SERVER_THREADS": "8"}  # due after 1 s
    servers = [RunningServer(directory, env=env), RunningServer(directory, env=env)]
    try:
        urls = [crl_url(s) for s in servers]
        served = []
        rounds = 3
        with httpx.Client(timeout=30) as http, concurrent.futures.ThreadPoolExecutor(24) as pool:
            for _ in range(rounds):
                responses = list(pool.map(lambda i: http.get(urls[i % 2]), range(24)))
                assert [r.status_code for r in responses] == [200] * 24, [r.text for r in responses if r.status_code != 200]
                served += [x509.load_der_x509_crl(r.content) for r in responses]
                time.sleep(1.2)  # past half the validity: the next round finds the CRL due
        instance = Instance.open(directory)
        store = Store(database_env.get("SCEPD_DATABASE_URL") or instance.database_url)
        try:
            ca = load_key_material(instance).ca
            with store.engine.connect() as connection:
                stored = connection.execute(text("select number, this_update, der from crls order by number")).all()
        finally:
            store.dispose()
        numbers = [row.number for row in stored]
        assert numbers == list(range(1, len(numbers) + 1)), "unique and in sequence"
        assert [row.this_update for row in stored] == sorted(row.this_update for row in stored)
        # Serialised: each round finds the CRL due once, and one fetch re-signs it.
        assert len(numbers) <= 2 * rounds, f"{len(numbers)} CRLs signed in {rounds} rounds"
        by_number = {row.number: bytes(row.der) for row in stored}
        for crl in served:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            assert crl.public_bytes(Encoding.DER) == by_number[number]
            assert crl.is_signature_valid(ca.certificate.public_key())
    finally:
        for s in servers:
            s.stop()


# --- PostgreSQL's timeouts ----------------------------------------------------------------------


def test_postgresql_lock_timeout_is_store_unavailable(tmp_path, fresh_postgres):
    import psycopg

    instance = Instance.open(new_instance(tmp_path / "instance"))
    ca = load_key_material(instance).ca
    store = Store(fresh_postgres, busy_timeout=1)
    store.upgrade()
    holder = psycopg.connect(fresh_postgres.replace("postgresql+psycopg://", "postgresql://"))
    try:
        holder.execute("LOCK TABLE crls IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="due to (lock|statement) timeout"):
            CrlPublisher(store).current(ca)
        assert time.monotonic() - started < 2.5
        holder.rollback()
        assert CrlPublisher(store).current(ca).is_signature_valid(ca.certificate.public_key())
    finally:
        holder.close()
        store.dispose()


def test_notification_dispatcher_waits_out_a_locked_database_with_one_warning(tmp_path, caplog):
    """The queue lives in the store: while the database is locked the dispatcher says so once
    (no traceback every round) and delivers when it is back."""
    import logging

    from scepd.notifications import Dispatcher

    store = Store(f"sqlite:///{tmp_path / 'queue.db'}", busy_timeout=0.2)
    store.upgrade()
    with store.unit_of_work() as uow:  # one due delivery, so that each round must write (lease it)
        uow.add_notification("success", "QUEUED-1", {"transactionId": "QUEUED-1"}, ("http://127.0.0.1:9/closed",))
    dispatcher = Dispatcher(store, interval=0.05, timeout=0.5)
    holder = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING, logger="scepd.notifications"):
        dispatcher.start()
        time.sleep(1.5)  # several rounds against the lock
        holder.execute("ROLLBACK")
        time.sleep(0.5)
        dispatcher.stop()
    holder.close()
    paused = [r for r in caplog.records if "notifications paused" in r.getMessage()]
    resumed = [r for r in caplog.records if "notifications resumed" in r.getMessage()]
    assert len(paused) == 1 and len(resumed) == 1, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_delivery_target_answering_without_end_is_not_read(tmp_path):
    """Only the status of a webhook's answer matters: a target that sends an endless body
    is heard (200, delivered) without its body being read into memory."""
    import socketserver

    from scepd.notifications import Dispatcher

    class Endless(socketserver.StreamRequestHandler):
        def handle(self):
            self.rfile.readline()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            try:
                for _ in range(100_000):  # 6.5 GB if anyone read it all
                    self.wfile.write(chunk)
            except OSError:
                pass  # the dispatcher hung up: what we want

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = Store(f"sqlite:///{tmp_path / 'queue.db'}")
    store.upgrade()
    with store.unit_of_work() as uow:
        uow.add_notification("success", "ENDLESS-1", {"transactionId": "ENDLESS-1"},
                             (f"http://127.0.0.1:{server.server_address[1]}/hook",))
    try:
        started = time.monotonic()
        assert Dispatcher(store, timeout=5).run_once() == 1
        assert time.monotonic() - started < 3
        assert store.delivery_states()[0]["delivered"]
    finally:
        server.shutdown()
        server.server_close()
