"""SCEP enrollment throughput against the crypto limit, measured in the same run.

    python bench/scepbench.py [--url URL --challenge C] [--workers 1] [--concurrency 8]
                              [--duration 10] [--key-type rsa|ec] [--db URL] [--json-only]

Without --url a scepd instance is created in a temporary directory and served locally
(`--workers`, `--db` apply to it). With --url any SCEP server that accepts a static challenge
is measured. PKCSReq messages are made beforehand from a pool of cached device keys (key
generation and request signing are not measured), sent by HTTP POST with `--concurrency`
clients for `--duration` seconds, and afterwards every response is opened and checked: a
SUCCESS that does not hold a valid certificate for the request's key counts as an error.

The crypto bound: an enrollment needs three private-key operations (RA decrypts the request's
key, CA signs the certificate, RA signs the CertRep); their rate with `cryptography` in this
process, on this machine, just before and just after the load (the mean of the two), gives
the enrollments per second one core could reach if everything else were free. The ratio
throughput / (bound x cores used) is what the server's overhead leaves of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from scepd.client.client import build_csr, pick_ca_and_ra, self_signed
from scepd.protocol import MessageType, PkiStatus, enveloped, signed
from scepd.protocol.message import build_pki_message, parse_pki_message

CHALLENGE = "bench-static-challenge"


# --- the crypto bound ---------------------------------------------------------------------


def private_ops_per_second(key, seconds: float = 1.0) -> float:
    data = b"x" * 32
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        if isinstance(key, rsa.RSAPrivateKey):
            key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.sign(data, ec.ECDSA(hashes.SHA256()))
        count += 1
    return count / (time.perf_counter() - started)


def crypto_bound(ca_key_type: str) -> dict:
    """Enrollments/s one core could do if the three private-key operations were all."""
    rsa_rate = private_ops_per_second(rsa.generate_private_key(65537, 2048))
    ca_rate = rsa_rate if ca_key_type == "rsa" else private_ops_per_second(ec.generate_private_key(ec.SECP256R1()))
    per_enrollment = 2 / rsa_rate + 1 / ca_rate  # RA decrypt + RA sign (RSA) + CA sign
    return {"rsa2048_private_ops_per_s": round(rsa_rate), "ca_private_ops_per_s": round(ca_rate),
            "enrollments_per_s_per_core": round(1 / per_enrollment, 1)}


def mean_bound(*bounds: dict) -> dict:
    rates = {key: round(statistics.mean(b[key] for b in bounds), 1) for key in bounds[0]}
    rates["rsa2048_private_ops_per_s_measured"] = [b["rsa2048_private_ops_per_s"] for b in bounds]
    return rates


# --- requests made beforehand ------------------------------------------------------------------


def _make_requests(args) -> list[tuple[str, bytes]]:
    """(transaction ID, pkiMessage) for each request of one chunk (runs in a worker process)."""
    key_ders, signer_ders, ra_der, start, count, digest = args
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    keys = [load_der_private_key(k, None) for k in key_ders]
    signers = [x509.load_der_x509_certificate(d) for d in signer_ders]
    ra = x509.load_der_x509_certificate(ra_der)
    out = []
    for i in range(start, start + count):
        key, signer = keys[i % len(keys)], signers[i % len(keys)]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{i}")])
        csr = build_csr(key, subject, challenge=CHALLENGE).public_bytes(Encoding.DER)
        transaction_id = secrets.token_hex(20).upper()
        message = build_pki_message(
            message_type=MessageType.PKCS_REQ, transaction_id=transaction_id, signer_certificate=signer,
            signer_key=key, digest_algorithm=digest, envelope=enveloped.build_enveloped(csr, ra, enveloped.ContentCipher.AES_128_CBC),
        )
        out.append((transaction_id, message, i % len(keys)))
    return out


def make_requests(keys, signers, ra: x509.Certificate, count: int, digest: str = "sha256"):
    """(transaction ID, pkiMessage, key index) for `count` requests, made on every core.
    `signers[i]` is the certificate that signs the requests of `keys[i]` (the replies are
    encrypted to it, so the same one must open them afterwards)."""
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    key_ders = [k.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()) for k in keys]
    signer_ders = [c.public_bytes(Encoding.DER) for c in signers]
    chunks = max(1, os.cpu_count() or 1)
    size = -(-count // chunks)
    jobs = [(key_ders, signer_ders, ra.public_bytes(Encoding.DER), i * size, min(size, count - i * size), digest)
            for i in range(chunks) if i * size < count]
    with ProcessPoolExecutor(chunks) as pool:
        return [item for part in pool.map(_make_requests, jobs) for item in part]


# --- a local server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefill(database_url: str, count: int) -> None:
    """`count` issued certificates already in the store (random bytes stand in for DER):
    the cost of an enrollment must not grow with the store."""
    import datetime as dt

    from sqlalchemy import insert

    from scepd.store import Store
    from scepd.store.models import IssuedCertificate, ScepTransaction

    store = Store(database_url)
    now = dt.datetime.now(dt.timezone.utc)
    for start in range(0, count, 5000):
        rows = []
        for i in range(start, min(count, start + 5000)):
            serial = secrets.token_hex(19)
            rows.append({"serial": serial, "issuer_key_id": "00", "subject": f"CN=prefill-{i}", "template": "prefill",
                         "not_before": now, "not_after": now + dt.timedelta(days=365), "sha256": secrets.token_hex(32),
                         "der": secrets.token_bytes(900), "transaction_id": f"PREFILL-{i}", "status": "valid", "created_at": now})
        with store.engine.begin() as connection:
            connection.execute(insert(IssuedCertificate), rows)
            connection.execute(insert(ScepTransaction), [
                {"transaction_id": r["transaction_id"], "message_type": "PKCS_REQ", "status": "issued", "subject": r["subject"],
                 "template": "prefill", "public_key_sha256": secrets.token_hex(32), "signer_key_sha256": secrets.token_hex(32),
                 "csr_der": b"", "certificate_serial": r["serial"], "created_at": now, "updated_at": now} for r in rows])
    store.dispose()


class LocalServer:
    def __init__(self, workers: int, key_type: str, db: str | None, prefilled: int = 0, threads: int = 0,
                 source: Path | None = None, cpu_affinity: str = "") -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="scepbench-"))
        scepd = [sys.executable, "-m", "scepd.cli"]
        key = "rsa:2048" if key_type == "rsa" else "ec:p256"
        env = {**os.environ, "SCEPD_LOGGING_FILE": ""}  # measure SCEP, not log writing to disk
        if source is not None:  # another revision's code (bench/report.py --before): ahead of the installed one
            env["PYTHONPATH"] = str(source)
        subprocess.run([*scepd, "init", "--dir", str(self.directory), "--key", key, "--challenge", CHALLENGE],
                       check=True, capture_output=True, env=env)
        if threads:
            env["SCEPD_SERVER_THREADS"] = str(threads)
        if cpu_affinity:
            env["SCEPD_SERVER_CPU_AFFINITY"] = cpu_affinity
        if db:
            env["SCEPD_DATABASE_URL"] = db
            subprocess.run([*scepd, "db", "upgrade", "--dir", str(self.directory)], check=True, capture_output=True, env=env)
        if prefilled:
            prefill(db or f"sqlite:///{self.directory / 'scepd.db'}", prefilled)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/scep"
        self.process = subprocess.Popen(
            [*scepd, "serve", "--dir", str(self.directory), "--port", str(self.port), "--workers", str(workers)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError("the local scepd did not start")
        time.sleep(0.5 * workers)  # let every worker import and load its keys

    def pids(self) -> list[int]:
        """The server process and its worker processes."""
        pids = [self.process.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids

    def cpu_seconds(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        return total

    def rss_mb(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total = max(total, int(line.split()[1]))
            except OSError:
                continue
        return total / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


# --- the run -------------------------------------------------------------------------------------


def run(url: str, requests, keys, concurrency: int, duration: float):
    """Send requests for `duration` seconds; (latencies, responses, elapsed)."""
    lock = threading.Lock()
    position = [0]
    results: list[tuple[float, int, bytes, int]] = []
    started = time.perf_counter()
    stop_at = started + duration

    def worker():
        with httpx.Client(timeout=30) as http:
            while time.perf_counter() < stop_at:
                with lock:
                    if position[0] >= len(requests):
                        return
                    index = position[0]
                    position[0] += 1
                _, body, _ = requests[index]
                sent = time.perf_counter()
                try:
                    response = http.post(f"{url}?operation=PKIOperation", content=body,
                                         headers={"Content-Type": "application/x-pki-message"})
                    status, content = response.status_code, response.content
                except httpx.HTTPError:
                    status, content = 0, b""
                with lock:
                    results.append((time.perf_counter() - sent, status, content, index))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - started, position[0] >= len(requests)


def verify(results, requests, keys, signers_by_key, ca_certs) -> int:
    """Open every answer: errors are anything but a SUCCESS holding a valid certificate for
    the request's own key, issued by the CA."""
    errors = 0
    ca = ca_certs.ca
    for _, status, content, index in results:
        transaction_id, _, key_index = requests[index]
        try:
            if status != 200:
                raise ValueError(f"HTTP {status}")
            reply = parse_pki_message(content, ca_certs.all)
            if reply.signature_error or reply.pki_status is not PkiStatus.SUCCESS or reply.transaction_id != transaction_id:
                raise ValueError("not a verified SUCCESS for this transaction")
            opened = enveloped.decrypt_enveloped(reply.envelope, [signers_by_key[key_index]])
            cert = signed.parse_certs_only(opened.content)[0]
            wanted = keys[key_index].public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            if cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != wanted:
                raise ValueError("certificate for another key")
            cert.verify_directly_issued_by(ca)
        except Exception:
            errors += 1
    return errors


def measure(args) -> dict:
    server = None if args.url else LocalServer(args.workers, args.key_type, args.db, args.prefill, args.threads,
                                                args.source, args.cpu_affinity)
    url = args.url or server.url
    try:
        with httpx.Client() as http:
            response = http.get(url, params={"operation": "GetCACert"})
            response.raise_for_status()
        ca_certs = pick_ca_and_ra(signed.parse_certs_only(response.content)
                                  if "ra-cert" in response.headers.get("content-type", "")
                                  else [x509.load_der_x509_certificate(response.content)])
        keys = [rsa.generate_private_key(65537, 2048) for _ in range(16)]  # the device-key pool
        signer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench signer")])
        signers = [self_signed(k, signer_name) for k in keys]
        expected = int(args.duration * args.expect_rate) + 200
        requests = make_requests(keys, signers, ca_certs.ra, expected)
        signers_by_key = dict(enumerate(zip(signers, keys, strict=True)))
        before = crypto_bound(args.key_type)
        cpu_before = server.cpu_seconds() if server else None
        client_cpu_before = time.process_time()
        results, elapsed, exhausted = run(url, requests, keys, args.concurrency, args.duration)
        client_cpu = time.process_time() - client_cpu_before
        cpu_after = server.cpu_seconds() if server else None
        rss = server.rss_mb() if server else None
        # Measured again after the load: this kind of machine's speed drifts by tens of
        # percent within minutes, and the ratio is to the mean of the two.
        bound = mean_bound(before, crypto_bound(args.key_type))
    finally:
        if server:
            server.stop()
    errors = verify(results, requests, keys, signers_by_key, ca_certs)
    latencies = sorted(r[0] for r in results)
    ok = len(results) - errors
    throughput = ok / elapsed
    cores = min(args.workers, os.cpu_count() or 1)

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 2) if latencies else None

    return {
        "url": args.url or "local scepd",
        "workers": args.workers,
        "threads": args.threads or "auto",
        "source": str(args.source) if args.source else None,
        "cpu_affinity": args.cpu_affinity or None,
        "concurrency": args.concurrency,
        "duration_s": round(elapsed, 2),
        "key_type": args.key_type,
        "db": "postgresql" if (args.db or "").startswith("postgresql") else "sqlite",
        "prefilled_certificates": args.prefill,
        "enrollments": ok,
        "errors": errors,
        "requests_exhausted": exhausted,
        "enrollments_per_s": round(throughput, 1),
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99), "mean": round(statistics.mean(latencies) * 1000, 2) if latencies else None},
        "server_cpu_s_per_enrollment": round((cpu_after - cpu_before) / ok, 5) if server and ok else None,
        "server_rss_mb": round(rss, 1) if rss else None,
        # The load generator shares the machine: what it takes is not the server's.
        "client_cpu_s_per_request": round(client_cpu / len(results), 5) if results else None,
        "crypto_bound": bound,
        "ratio_to_bound": round(throughput / (bound["enrollments_per_s_per_core"] * cores), 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def table(result: dict) -> str:
    rows = [
        ("enrollments/s", result["enrollments_per_s"]),
        ("errors", result["errors"]),
        ("latency p50/p95/p99 ms", f"{result['latency_ms']['p50']} / {result['latency_ms']['p95']} / {result['latency_ms']['p99']}"),
        ("server CPU s/enrollment", result["server_cpu_s_per_enrollment"]),
        ("server RSS MB (largest process)", result["server_rss_mb"]),
        ("crypto bound /s/core", result["crypto_bound"]["enrollments_per_s_per_core"]),
        ("throughput / (bound x cores)", result["ratio_to_bound"]),
    ]
    head = f"workers={result['workers']} concurrency={result['concurrency']} key={result['key_type']} db={result['db']}"
    return head + "\n" + "\n".join(f"  {k:34} {v}" for k, v in rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a SCEP server to measure (default: a local scepd)")
    p.add_argument("--challenge", default=CHALLENGE, help="its static challenge")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the local scepd")
    p.add_argument("--threads", type=int, default=0,
                   help="enrollment threads per worker of the local scepd (default: its own choice, [server] threads)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    p.add_argument("--key-type", choices=["rsa", "ec"], default="rsa", help="the local CA's key (the RA is RSA)")
    p.add_argument("--db", help="database URL for the local scepd (default: SQLite)")
    p.add_argument("--prefill", type=int, default=0, help="certificates already in the local store (e.g. 100000)")
    p.add_argument("--expect-rate", type=float, default=400.0, help="requests prepared per second of duration")
    p.add_argument("--cpu-affinity", default="", help="[server] cpu_affinity of the local scepd (e.g. auto)")
    p.add_argument("--source", type=Path, help="the src/ directory whose scepd the local server runs (default: the installed one)")
    p.add_argument("--json-only", action="store_true")
    return p


def main() -> int:
    args = parser().parse_args()
    global CHALLENGE
    CHALLENGE = args.challenge
    result = measure(args)
    print(json.dumps(result))
    if not args.json_only:
        print(table(result), file=sys.stderr)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
