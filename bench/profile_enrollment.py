"""Where one enrollment's time goes, without HTTP: PKCSReqs through the SCEP service.

    python bench/profile_enrollment.py [--count 400] [--key-type rsa|ec] [--stages] [--profile] [--top 30]

A throwaway instance (RSA-2048 RA, CA of --key-type, SQLite) answers --count PKCSReqs made
beforehand, in this process. Printed: CPU milliseconds per enrollment, the three private-key
operations' share of it (timed here, now, in alternation with the enrollments); with
--stages the CPU time of each stage of an enrollment (timed around the functions that do
them, without a profiler's distortion); with --profile cProfile's functions by their own
time. cProfile slows Python code more than C code, so the plain timing is the figure; the
profile says which parts to look at.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).parent))
from scepbench import CHALLENGE, crypto_bound, make_requests  # noqa: E402

import scepd.protocol.requests  # noqa: E402
import scepd.service.pki  # noqa: E402
from scepd.ca.authority import CertificateAuthority  # noqa: E402
from scepd.client.client import self_signed  # noqa: E402
from scepd.protocol import enveloped, signed  # noqa: E402
from scepd.registry.instance import Instance, create_instance, load_key_material  # noqa: E402
from scepd.service.pki import ScepService  # noqa: E402
from scepd.wiring import build_services  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--key-type", choices=["rsa", "ec"], default="rsa")
    p.add_argument("--stages", action="store_true", help="also time each stage of an enrollment")
    p.add_argument("--profile", action="store_true", help="also run under cProfile and print the top functions")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--sort", default="tottime", help="cProfile sort key: tottime or cumulative")
    p.add_argument("--dump", help="write the cProfile data to this file (for pstats or snakeviz)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="scepd-profile-") as tmp:
        key = "rsa:2048" if args.key_type == "rsa" else "ec:p256"
        create_instance(Path(tmp), key_spec=key, static_challenge=CHALLENGE)
        instance = Instance.open(Path(tmp))
        material = load_key_material(instance)
        store = instance.open_store()
        service = build_services(instance, store, material=material).scep

        keys = [rsa.generate_private_key(65537, 2048) for _ in range(8)]
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "profile signer")])
        signers = [self_signed(k, name) for k in keys]
        runs = 1 + args.profile + args.stages
        requests = make_requests(keys, signers, material.ra.certificate, args.count * runs + 20)
        for _, body, _ in requests[:20]:  # warm caches and the database file
            service.pki_operation(body)

        # This machine's speed varies from minute to minute (shared cores): the enrollments
        # and the private-key operations are timed in alternation, and each figure is the
        # best of three rounds. CPU time, so that waiting for the disk is not counted.
        batch = requests[20:20 + args.count]
        third = len(batch) // 3
        per_enrollment, crypto_ms = float("inf"), float("inf")
        for round_ in range(3):
            started, times = time.process_time(), os.times()
            for _, body, _ in batch[round_ * third:(round_ + 1) * third]:
                result = service.pki_operation(body)
                if result.status != "SUCCESS":
                    raise SystemExit(f"enrollment failed: {result.refusal}")
            per_enrollment = min(per_enrollment, (time.process_time() - started) / third)
            after = os.times()
            print(f"round {round_ + 1}: {(after.user - times.user) / third * 1000:.2f} ms user, "
                  f"{(after.system - times.system) / third * 1000:.2f} ms system per enrollment")
            crypto_ms = min(crypto_ms, 1000 / crypto_bound(args.key_type)["enrollments_per_s_per_core"])

        print(f"{per_enrollment * 1000:.2f} ms of CPU per enrollment in-process "
              f"({1 / per_enrollment:.0f}/s); the private-key operations: {crypto_ms:.2f} ms "
              f"({crypto_ms / (per_enrollment * 1000):.0%})")

        extra = requests[20 + args.count:]
        if args.stages:
            stage_batch, extra = extra[:args.count], extra[args.count:]
            print_stages(service, stage_batch, crypto_ms / 3)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _, body, _ in extra:
                service.pki_operation(body)
            profiler.disable()
            if args.dump:
                profiler.dump_stats(args.dump)
            stats = pstats.Stats(profiler).strip_dirs().sort_stats(args.sort)
            # Unlike times, the count of Python calls is the same on a busy and an idle machine.
            print(f"{stats.total_calls / len(extra):.0f} Python function calls per enrollment")
            stats.print_stats(args.top)
        store.dispose()
    return 0


# (label, object, attribute, private-key operations inside): where each stage is done. The
# signed CertRep is built inside build_cert_rep, so its time is subtracted from that one's.
STAGES = [
    ("parse the pkiMessage, verify its signature", scepd.protocol.requests, "parse_pki_message", 0),
    ("decrypt the envelope", enveloped, "decrypt_enveloped", 1),
    ("parse and check the CSR", scepd.protocol.requests, "parse_csr", 0),
    ("sign the certificate", CertificateAuthority, "issue", 1),
    ("CertRep: certs-only and envelope", scepd.service.pki, "build_cert_rep", 0),
    ("CertRep: signed attributes, SignedData, signature", signed, "build_signed_data", 1),
]


def print_stages(service: ScepService, batch, private_op_ms: float) -> None:
    spent = {label: 0.0 for label, *_ in STAGES}
    originals = []

    def timed(label, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] += time.thread_time() - started
        return wrapper

    for label, owner, name, _ in STAGES:
        originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, timed(label, getattr(owner, name)))
    try:
        started = time.thread_time()
        for _, body, _ in batch:
            service.pki_operation(body)
        total = time.thread_time() - started
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    spent["CertRep: certs-only and envelope"] -= spent["CertRep: signed attributes, SignedData, signature"]
    n = len(batch)
    rows = [(label, spent[label] / n * 1000, ops) for label, _, _, ops in STAGES]
    rows.append(("the rest: challenge, template, store and commit", (total - sum(spent.values())) / n * 1000, 0))
    print(f"\nstages, CPU ms per enrollment (one private-key operation: {private_op_ms:.2f} ms):")
    for label, ms, ops in rows:
        beyond = f"   {ms - ops * private_op_ms:5.2f} beyond its private-key operation" if ops else ""
        print(f"  {label:<52} {ms:5.2f}{beyond}")
    print(f"  {'in all':<52} {total / n * 1000:5.2f}")


if __name__ == "__main__":
    sys.exit(main())
