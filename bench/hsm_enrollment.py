"""What keeping the keys in an HSM costs per enrollment: the same in-process PKCSReqs (as
bench/profile_enrollment.py makes them) answered by an instance with key files and by one
whose keys are in a SoftHSM2 token, in the same run, in alternation.

    python bench/hsm_enrollment.py [--count 300] [--key-type rsa|ec] [--module /usr/lib/softhsm/libsofthsm2.so]

Each enrollment does three private-key operations (decrypt the envelope with the RA key,
sign the certificate with the CA key, sign the CertRep with the RA key); with the token
they go through PKCS#11. Printed: wall-clock ms per enrollment for each (best of three
rounds; wall clock, since SoftHSM's work is CPU time of this process too, but a network
HSM's is not), and the ratio. Needs softhsm2 (softhsm2-util) and the pkcs11 extra.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).parent))
from scepbench import CHALLENGE, make_requests  # noqa: E402

PIN = "bench-pin-1234"


def make_token(directory: Path) -> None:
    """A throwaway SoftHSM2 token "scepd" under `directory`; SOFTHSM2_CONF points at it
    before the module is first loaded (SoftHSM reads it at C_Initialize)."""
    tokens = directory / "tokens"
    tokens.mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["SCEPD_BENCH_PKCS11_PIN"] = PIN
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "scepd", "--pin", PIN, "--so-pin", "so-" + PIN],
                   check=True, capture_output=True)


def service_for(directory: Path, key: str, pkcs11: str | None):
    from scepd.registry.instance import Instance, create_instance, load_key_material
    from scepd.wiring import build_services

    create_instance(directory, key_spec=key, static_challenge=CHALLENGE, pkcs11=pkcs11)
    instance = Instance.open(directory)
    material = load_key_material(instance)
    store = instance.open_store()
    return build_services(instance, store, material=material).scep, material, store


def timed(service, batch) -> float:
    started = time.perf_counter()
    for _, body, _ in batch:
        result = service.pki_operation(body)
        if result.status != "SUCCESS":
            raise SystemExit(f"enrollment failed: {result.refusal}")
    return (time.perf_counter() - started) / len(batch)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=300, help="enrollments per instance and round")
    p.add_argument("--key-type", choices=["rsa", "ec"], default="rsa", help="the CA's key (the RA is RSA-2048)")
    p.add_argument("--module", default="/usr/lib/softhsm/libsofthsm2.so")
    args = p.parse_args()
    key = "rsa:2048" if args.key_type == "rsa" else "ec:p256"
    uri = f"pkcs11:token=scepd?module-path={args.module}&pin-source=env:SCEPD_BENCH_PKCS11_PIN"

    with tempfile.TemporaryDirectory(prefix="scepd-hsm-bench-") as tmp:
        make_token(Path(tmp))
        files, files_material, files_store = service_for(Path(tmp) / "files", key, None)
        token, token_material, token_store = service_for(Path(tmp) / "token", key, uri)
        keys = [rsa.generate_private_key(65537, 2048) for _ in range(8)]
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench signer")])
        from scepd.client.client import self_signed

        signers = [self_signed(k, name) for k in keys]
        per_round = args.count + 10
        work = {label: make_requests(keys, signers, material.ra.certificate, per_round * 3)
                for label, material in (("files", files_material), ("token", token_material))}
        best = {"files": float("inf"), "token": float("inf")}
        for round_ in range(3):
            for label, service in (("files", files), ("token", token)):
                batch = work[label][round_ * per_round:(round_ + 1) * per_round]
                for _, body, _ in batch[:10]:  # warm caches
                    service.pki_operation(body)
                best[label] = min(best[label], timed(service, batch[10:]))
            print(f"round {round_ + 1}: files {best['files'] * 1000:.2f} ms, token {best['token'] * 1000:.2f} ms")
        ratio = best["token"] / best["files"]
        print(f"key files:     {best['files'] * 1000:.2f} ms per enrollment ({1 / best['files']:.0f}/s)")
        print(f"SoftHSM2 keys: {best['token'] * 1000:.2f} ms per enrollment ({1 / best['token']:.0f}/s)")
        print(f"ratio: {ratio:.2f}x ({(best['token'] - best['files']) * 1000:+.2f} ms per enrollment for 3 token operations)")
        files_store.dispose()
        token_store.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
