"""A real third-party client in intune mode: strongSwan's `pki --scep` with a challenge that
only Intune (the emulator) knows; Intune is told of the certificate before strongSwan has it,
and a challenge Intune refuses gets no certificate and no failure notification."""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import RunningServer, require_tool
from intune_emulator import IntuneEmulator
from test_intune import SECRET, intune_instance
from test_strongswan import pki


@pytest.fixture
def emulator(tmp_path):
    emulator = IntuneEmulator(tmp_path / "emulator", client_secret=SECRET)
    emulator.codes = {"intune-strongswan": "Success", "intune-expired": "ChallengeExpired"}
    yield emulator
    emulator.close()


def test_strongswan_enrolls_through_intune(emulator, tmp_path):
    require_tool("pki")
    d = tmp_path / "scep"
    intune_instance(d, emulator)
    server = RunningServer(d, env={"SCEPD_INTUNE_CLIENT_SECRET": SECRET})
    work = tmp_path / "strongswan"
    work.mkdir()
    try:
        fetched = pki("--scepca", "--url", server.url, "--caout", "ca.pem", "--raout", "ra.pem", "--outform", "pem",
                      cwd=work)
        assert fetched.returncode == 0, fetched.stderr
        runs = {}
        for challenge in ("intune-strongswan", "intune-expired"):
            (work / f"{challenge}.key").write_text(pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "pem",
                                                       cwd=work).stdout)
            runs[challenge] = subprocess.run(
                ["pki", "--scep", "--url", server.url, "--in", f"{challenge}.key", "--dn", f"CN={challenge}",
                 "--password", challenge, "--cacert-enc", "ra.pem", "--cacert-sig", "ca.pem", "--cipher", "des3",
                 "--outform", "pem"], cwd=work, capture_output=True, timeout=120)
            runs[challenge + ":done"] = time.monotonic()
        log = server.log_lines()
    finally:
        server.stop()
    good, expired = runs["intune-strongswan"], runs["intune-expired"]
    assert good.returncode == 0, good.stderr.decode()
    (work / "cert.pem").write_bytes(good.stdout)
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(d / "ca.pem"), str(work / "cert.pem")],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    assert emulator.errors == []
    validations = [e for e in emulator.events if e[0] == "validate"]
    assert [v[2] for v in validations] == ["Success", "ChallengeExpired"]
    [success] = [e for e in emulator.events if e[0] == "success"]
    assert success[1] == validations[0][1]  # strongSwan's transactionID
    assert success[4] < runs["intune-strongswan:done"]
    # Intune refused: strongSwan gets FAILURE, Intune is not sent a failureNotification.
    assert expired.returncode != 0 and b"badRequest" in expired.stderr
    assert "failure" not in emulator.kinds()
    refused = [line for line in log if "CN=intune-expired" in line and '"code"' in line]
    assert refused and '"code": "ChallengeExpired"' in refused[-1]
