"""Scaled out and crash-safe: several servers on one PostgreSQL behave as one service, a
server of several workers shares its socket, and a server killed with SIGKILL under load
loses nothing a client received."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import CHALLENGE, RunningServer, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from scepd.client import ScepClient
from scepd.client.client import self_signed
from scepd.protocol import PkiStatus
from scepd.registry.config import update_config_file
from scepd.registry.instance import create_instance
from scepd.store import Store

ENCRYPT_ONLY = x509.KeyUsage(False, False, True, False, False, False, False, False, False)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


KEYS = [rsa.generate_private_key(65537, 2048) for _ in range(4)]  # key generation is not under test


def test_servers_on_one_postgresql_behave_as_one(tmp_path, fresh_postgres):
    d = tmp_path / "pg"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {
        "database": {"url": fresh_postgres},
        "templates": {"Manual": {"approval": "manual"}},
        "template_mapping": {"EncryptionTemplate": "Manual"},
    })
    assert run_scepd("db", "upgrade", "--dir", str(d)).returncode == 0
    a, b = RunningServer(d), RunningServer(d)
    try:
        ca, cb = ScepClient(a.url), ScepClient(b.url)

        # A one-time password is accepted exactly once, even when both servers race for it.
        password = run_scepd("otp", "new", "--dir", str(d)).stdout.strip()
        barrier = threading.Barrier(2)

        def race(client, key, cn):
            barrier.wait()
            return client.enroll(key, name(cn), challenge=password)

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(race, (ca, cb), KEYS[:2], ("race-a", "race-b")))
        statuses = sorted(r.status.name for r in results)
        assert statuses == ["FAILURE", "SUCCESS"], [r.fail_info_text for r in results]
        assert next(r for r in results if r.status is PkiStatus.FAILURE).fail_info_text.startswith("OneTimePasswordUsed")

        # A resent PKCSReq gets the same certificate whichever server it reaches.
        cas = ca.get_ca_certs()
        signer = (self_signed(KEYS[2], name("resent")), KEYS[2])  # a resend: same request, same signer
        first = ca.enroll(KEYS[2], name("resent"), challenge=CHALLENGE, ca=cas, transaction_id="PG-RESEND", signer=signer)
        again = cb.enroll(KEYS[2], name("resent"), challenge=CHALLENGE, ca=cas, transaction_id="PG-RESEND", signer=signer)
        assert first.status is again.status is PkiStatus.SUCCESS and first.certificate == again.certificate

        # An MDM challenge spent on one server is refused by the other.
        challenge = run_scepd("challenge", "issue", "--dir", str(d), "--subject", "CN=mdm-pg").stdout.strip()
        assert ca.enroll(KEYS[3], name("mdm-pg"), challenge=challenge).status is PkiStatus.SUCCESS
        replay = cb.enroll(rsa.generate_private_key(65537, 2048), name("mdm-pg"), challenge=challenge)
        assert replay.fail_info_text.startswith("ChallengeReplayed")

        # A request made pending on one server, approved, is collected from the other.
        key = rsa.generate_private_key(65537, 2048)
        signer = (self_signed(key, name("approve-me")), key)  # the resend that collects it: same signer
        pending = ca.enroll(key, name("approve-me"), challenge=CHALLENGE, ca=cas, key_usage=ENCRYPT_ONLY, signer=signer)
        assert pending.status is PkiStatus.PENDING
        assert run_scepd("requests", "approve", pending.transaction_id, "--dir", str(d)).returncode == 0
        collected = cb.enroll(key, name("approve-me"), challenge=CHALLENGE, ca=cas, key_usage=ENCRYPT_ONLY,
                              transaction_id=pending.transaction_id, signer=signer)
        assert collected.status is PkiStatus.SUCCESS

        store = Store(fresh_postgres)
        serials = [c.serial for c in store.list_certificates(limit=1000)]
        assert len(serials) == len(set(serials)) == 4
        store.dispose()
    finally:
        a.stop()
        b.stop()


def test_workers_share_the_socket(tmp_path):
    d = tmp_path / "workers"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"server": {"workers": 2}})
    server = RunningServer(d)
    try:
        # A new connection per request: the kernel hands each to whichever worker accepts
        # first, and a worker busy signing leaves the next one to the other.
        client = ScepClient(server.url, http=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30))
        cas = client.get_ca_certs()
        keys = [rsa.generate_private_key(65537, 2048) for _ in range(4)]

        def one(i):
            return client.enroll(keys[i % 4], name(f"w{i}"), challenge=CHALLENGE, ca=cas)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(40)))
        assert all(r.status is PkiStatus.SUCCESS for r in results)
        pids = {json.loads(line)["pid"] for line in server.log_lines() if '"PKIOperation"' in line}
        assert len(pids) == 2, f"requests were served by {pids}"
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_under_load_loses_nothing(tmp_path, backend, request):
    d = tmp_path / f"kill-{backend}"
    create_instance(d, key_spec="rsa:2048", static_challenge=CHALLENGE)
    if backend == "postgresql":
        update_config_file(d / "scepd.toml", {"database": {"url": request.getfixturevalue("fresh_postgres")}})
    server = RunningServer(d)
    received: list[x509.Certificate] = []
    lock = threading.Lock()
    stop = threading.Event()
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(8)]
    client = ScepClient(server.url, timeout=5)
    cas = client.get_ca_certs()

    def load(worker: int) -> None:
        for i in range(200):  # bounded in count, and it stops when the server dies
            if stop.is_set():
                return
            try:
                result = client.enroll(keys[(worker + i) % len(keys)], name(f"k{worker}-{i}"), challenge=CHALLENGE, ca=cas)
            except Exception:  # the server died under us: ScepClientError, httpx errors
                return
            if result.status is PkiStatus.SUCCESS:
                with lock:
                    received.append(result.certificate)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    deadline = threading.Event()
    deadline.wait(1.0)
    while len(received) < 15 and any(t.is_alive() for t in threads):
        deadline.wait(0.1)
    # SIGKILL mid-load (one worker: uvicorn serves in the scepd serve process itself).
    os.kill(server.process.pid, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(30)
    server.process.wait(10)
    assert len(received) >= 15

    store = Store(_store_url(d))
    stored = {c.serial: c.der for c in store.list_certificates(limit=100000)}
    for cert in received:
        assert stored.get(format(cert.serial_number, "x")) == cert.public_bytes(Encoding.DER)
    store.dispose()
    if backend == "sqlite":
        with sqlite3.connect(d / "scepd.db") as db:
            assert db.execute("pragma integrity_check").fetchone()[0] == "ok"

    restarted = RunningServer(d)  # and it comes back cleanly
    try:
        after = ScepClient(restarted.url).enroll(rsa.generate_private_key(65537, 2048), name("after-kill"), challenge=CHALLENGE)
        assert after.status is PkiStatus.SUCCESS
    finally:
        restarted.stop()


def _store_url(directory) -> str:
    from scepd.registry.instance import Instance

    return Instance.open(directory).database_url
