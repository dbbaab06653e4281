"""OCSP responses per second, cached and uncached, against the signature bound measured in the
same run.

    python bench/ocspbench.py [--workers 1] [--concurrency 8] [--duration 5] [--key-type rsa|ec]
                              [--signer delegated|ca] [--certificates 50] [--json-only]

A scepd instance is created in a temporary directory and served locally; `--certificates`
devices enroll, and a tenth of them are revoked. Then two loads of `--duration` seconds each,
POSTed by `--concurrency` clients:
- cached: requests without a nonce, round-robin over the certificates: after the first
  round each is answered from the responder's cache (one database read, no signature);
- uncached: every request carries a fresh nonce, so every answer is signed for it.
Every answer is checked afterwards: a successful response, for the serial asked, with the
status the store holds, the nonce echoed, and a signature that verifies with the signer's
certificate (the delegated one the response carries, or the CA).

The signature bound: private-key operations per second of the signer's kind of key (RSA 2048
for the delegated signer of an RSA CA, P-256 for an EC CA, the CA's own key with --signer ca)
in this process, before and after the loads (the mean): the uncached responses per second
one core could give if signing were all. The cached rate is not bound by it; that is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from scepbench import CHALLENGE, LocalServer, private_ops_per_second

from scepd.client import ScepClient
from scepd.protocol import PkiStatus


def signature_bound(key_type: str) -> float:
    """Signatures per second of the signer's kind of key, on one core."""
    key = rsa.generate_private_key(65537, 2048) if key_type == "rsa" else ec.generate_private_key(ec.SECP256R1())
    return private_ops_per_second(key)


def enroll_devices(server: LocalServer, count: int) -> tuple[x509.Certificate, list[x509.Certificate], set[int]]:
    """(CA certificate, device certificates, serials revoked)."""
    certificates = []
    key = rsa.generate_private_key(65537, 2048)  # one device key: the key is not what is measured
    with ScepClient(server.url) as client:
        ca = client.get_ca_certs().ca
        for i in range(count):
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ocsp-bench-{i}")])
            result = client.enroll(key, name, challenge=CHALLENGE)
            if result.status is not PkiStatus.SUCCESS:
                raise RuntimeError(f"enrollment failed: {result.fail_info_text}")
            certificates.append(result.certificate)
    revoked = {c.serial_number for c in certificates[:: 10]}
    for serial in revoked:
        subprocess.run([sys.executable, "-m", "scepd.cli", "certs", "revoke", format(serial, "x"), "--reason",
                        "keyCompromise", "--dir", str(server.directory)], check=True, capture_output=True)
    return ca, certificates, revoked


def request(cert: x509.Certificate, ca: x509.Certificate, nonce: bytes | None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, ca, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def load(url: str, bodies: list[tuple[int, bytes, bytes | None]], concurrency: int, duration: float):
    """POST `bodies` (serial, request, nonce) round-robin for `duration` seconds; the answers
    as (latency, status, content, index) and the time taken."""
    lock = threading.Lock()
    position = [0]
    results: list[tuple[float, int, bytes, int]] = []
    stop_at = time.perf_counter() + duration
    started = time.perf_counter()

    def worker():
        with httpx.Client(timeout=30) as http:
            while time.perf_counter() < stop_at:
                with lock:
                    index = position[0]
                    position[0] += 1
                _, body, _ = bodies[index % len(bodies)]
                sent = time.perf_counter()
                try:
                    response = http.post(url, content=body, headers={"Content-Type": "application/ocsp-request"})
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
    return results, time.perf_counter() - started


def _verify_one(content: bytes, serial: int, nonce: bytes | None, revoked: set[int], ca: x509.Certificate) -> None:
    answer = ocsp.load_der_ocsp_response(content)
    if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL or answer.serial_number != serial:
        raise ValueError("not a successful answer for this serial")
    wanted = ocsp.OCSPCertStatus.REVOKED if serial in revoked else ocsp.OCSPCertStatus.GOOD
    if answer.certificate_status is not wanted:
        raise ValueError(f"{answer.certificate_status} where the store says {wanted}")
    if nonce is not None and answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce != nonce:
        raise ValueError("nonce not echoed")
    signer = answer.certificates[0] if answer.certificates else ca
    if answer.certificates:
        signer.verify_directly_issued_by(ca)
    key = signer.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(answer.signature, answer.tbs_response_bytes, padding.PKCS1v15(), answer.signature_hash_algorithm)
    else:
        key.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(answer.signature_hash_algorithm))


def verify(results, bodies, revoked: set[int], ca: x509.Certificate) -> int:
    errors = 0
    for _, status, content, index in results:
        serial, _, nonce = bodies[index % len(bodies)]
        try:
            if status != 200:
                raise ValueError(f"HTTP {status}")
            _verify_one(content, serial, nonce, revoked, ca)
        except Exception:
            errors += 1
    return errors


def _summary(results, elapsed: float, errors: int, cpu: float, bound: float, cores: int) -> dict:
    latencies = sorted(r[0] for r in results)
    ok = len(results) - errors

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 2) if latencies else None

    rate = ok / elapsed
    return {"responses": ok, "errors": errors, "responses_per_s": round(rate, 1),
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                           "mean": round(statistics.mean(latencies) * 1000, 2) if latencies else None},
            "server_cpu_ms_per_response": round(cpu / ok * 1000, 3) if ok else None,
            "ratio_to_bound": round(rate / (bound * cores), 3)}


def measure(args) -> dict:
    os.environ["SCEPD_OCSP_SIGNER"] = args.signer  # LocalServer passes the environment on
    server = LocalServer(args.workers, args.key_type, None)
    url = f"http://127.0.0.1:{server.port}/ocsp"
    try:
        ca, certificates, revoked = enroll_devices(server, args.certificates)
        cached = [(c.serial_number, request(c, ca, None), None) for c in certificates]
        for _, body, _ in cached:  # the first round signs; the measured rounds find the cache
            httpx.post(url, content=body).raise_for_status()
        uncached = []
        for i in range(int(args.duration * args.expect_rate) + 200):
            nonce = secrets.token_bytes(16)
            cert = certificates[i % len(certificates)]
            uncached.append((cert.serial_number, request(cert, ca, nonce), nonce))
        key_type = "rsa" if isinstance(ca.public_key(), rsa.RSAPublicKey) else "ec"
        before = signature_bound(key_type)
        runs = {}
        for label, bodies in (("cached", cached), ("uncached", uncached)):
            cpu_before = server.cpu_seconds()
            results, elapsed = load(url, bodies, args.concurrency, args.duration)
            runs[label] = (results, elapsed, server.cpu_seconds() - cpu_before, bodies)
        bound = statistics.mean([before, signature_bound(key_type)])
    finally:
        server.stop()
    cores = min(args.workers, os.cpu_count() or 1)
    out = {"workers": args.workers, "concurrency": args.concurrency, "duration_s": args.duration,
           "key_type": args.key_type, "signer": args.signer, "certificates": len(certificates),
           "revoked": len(revoked), "signatures_per_s_per_core": round(bound, 1)}
    for label, (results, elapsed, cpu, bodies) in runs.items():
        out[label] = _summary(results, elapsed, verify(results, bodies, revoked, ca), cpu, bound, cores)
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return out


def table(result: dict) -> str:
    head = (f"workers={result['workers']} concurrency={result['concurrency']} key={result['key_type']} "
            f"signer={result['signer']} bound={result['signatures_per_s_per_core']} signatures/s/core")
    rows = []
    for label in ("cached", "uncached"):
        r = result[label]
        rows.append(f"  {label:9} {r['responses_per_s']:>9} responses/s  errors {r['errors']}  "
                    f"p50/p99 {r['latency_ms']['p50']}/{r['latency_ms']['p99']} ms  "
                    f"server CPU {r['server_cpu_ms_per_response']} ms/response  / (bound x cores) {r['ratio_to_bound']}")
    return head + "\n" + "\n".join(rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1, help="worker processes of the local scepd")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of each load")
    p.add_argument("--key-type", choices=["rsa", "ec"], default="rsa", help="the local CA's key")
    p.add_argument("--signer", choices=["delegated", "ca"], default="delegated", help="[ocsp] signer")
    p.add_argument("--certificates", type=int, default=50, help="devices enrolled (a tenth revoked)")
    p.add_argument("--expect-rate", type=float, default=1500.0, help="nonce requests prepared per second of duration")
    p.add_argument("--json-only", action="store_true")
    return p


def main() -> int:
    result = measure(parser().parse_args())
    print(json.dumps(result))
    if not parser().parse_args().json_only:
        print(table(result), file=sys.stderr)
    return 0 if result["cached"]["errors"] == result["uncached"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
