"""The audit trail: administrative actions from the command line (approve, revoke, an API
token made) and from the HTTP API (a challenge issued) recorded in the store's audit_events
and in the JSON log (logger "scepd.audit"), with who, from where, what and the result, and
listed by `scepd audit --json`."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import time

import httpx
import pytest
from conftest import CHALLENGE, RunningServer, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from scepd.client import ScepClient
from scepd.clock import FixedClock
from scepd.protocol import PkiStatus
from scepd.protocol.errors import ErrorCode, KeyUnavailable, Refusal
from scepd.registry.config import update_config_file
from scepd.registry.instance import create_instance
from scepd.service.admin import Actor, Administration, AuditTrail
from scepd.store import Store, StoreUnavailable


@pytest.fixture(scope="module")
def audited_dir(tmp_path_factory):
    """An instance whose every request waits for an administrator."""
    d = tmp_path_factory.mktemp("audit")
    create_instance(d, ca_subject="CN=Audit CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    manual = "Manual"
    update_config_file(d / "scepd.toml", {
        "templates": {manual: {"approval": "manual"}},
        "template_mapping": {k: manual for k in ("SignatureTemplate", "EncryptionTemplate", "GeneralPurposeTemplate")},
    })
    return d


@pytest.fixture(scope="module")
def srv(audited_dir):
    server = RunningServer(audited_dir)
    yield server
    server.stop()


def _audit(directory, *args) -> list[dict]:
    listed = run_scepd("audit", "--dir", str(directory), "--json", *args)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def _audit_log_lines(directory) -> list[dict]:
    lines = [json.loads(line) for line in (directory / "scepd.log").read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("logger") == "scepd.audit"]


def test_cli_approve_and_revoke_are_recorded_with_the_os_user(srv, audited_dir):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audited-device")])
    with ScepClient(srv.url) as client:
        pending = client.enroll(rsa.generate_private_key(65537, 2048), subject, challenge=CHALLENGE)
    assert pending.status is PkiStatus.PENDING
    tid = pending.transaction_id
    assert run_scepd("requests", "approve", tid, "--dir", str(audited_dir)).returncode == 0
    again = run_scepd("requests", "approve", tid, "--dir", str(audited_dir))
    assert again.returncode != 0
    serial = json.loads(run_scepd("requests", "show", tid, "--dir", str(audited_dir)).stdout)["serial"]
    assert run_scepd("certs", "revoke", serial, "--reason", "keyCompromise", "--dir", str(audited_dir)).returncode == 0

    events = [e for e in _audit(audited_dir) if e["target"] in (tid, serial)]
    assert [(e["action"], e["result"]) for e in events] == [
        ("request.approve", "ok"), ("request.approve", "RequestNotPending"), ("certificate.revoke", "ok")]
    for event in events:
        assert event["actor_kind"] == "cli" and event["actor"].startswith(pwd.getpwuid(os.geteuid()).pw_name)
        assert " on " in event["address"]  # the terminal (or "no tty") and the host
    assert events[0]["detail"] == f"serial {serial}"
    assert "keyCompromise" in events[2]["detail"]
    # The same, line by line, in the instance's JSON log.
    logged = [(line["action"], line["target"], line["result"]) for line in _audit_log_lines(audited_dir)]
    assert ("request.approve", tid, "ok") in logged and ("certificate.revoke", serial, "ok") in logged
    assert ("request.approve", tid, "RequestNotPending") in logged


def test_an_api_challenge_is_recorded_with_the_tokens_id_and_the_peer(srv, audited_dir):
    made = run_scepd("registry", "token", "new", "--dir", str(audited_dir))
    token = made.stdout.strip()
    token_id = made.stderr.split("its ID is ")[1].split()[0]
    url = f"http://127.0.0.1:{srv.port}/api/v1/challenges"
    for _ in range(50):  # the server reloads scepd.toml within seconds
        answer = httpx.post(url, json={"subject": "CN=api-audited"}, headers={"Authorization": f"Bearer {token}"})
        if answer.status_code != 401:
            break
        time.sleep(0.2)
    assert answer.status_code == 201, answer.text
    jti = answer.json()["jti"]

    events = _audit(audited_dir)
    made_event = next(e for e in events if e["action"] == "api_token.new")
    assert made_event["target"] == token_id and made_event["actor_kind"] == "cli"
    issued = next(e for e in events if e["action"] == "challenge.issue")
    assert issued == {**issued, "actor_kind": "api", "actor": f"token {token_id}", "address": "127.0.0.1",
                      "target": f"jti {jti}", "result": "ok"}
    logged = [line for line in _audit_log_lines(audited_dir) if line["action"] == "challenge.issue"]
    assert logged and logged[-1]["actor"] == f"token {token_id}" and logged[-1]["address"] == "127.0.0.1"
    assert token not in (audited_dir / "scepd.log").read_text()  # the token's ID, never the token


def test_audit_since_leaves_out_older_events(audited_dir):
    assert run_scepd("audit", "--dir", str(audited_dir), "--since", "soon").returncode == 2
    store = Store(f"sqlite:///{audited_dir / 'scepd.db'}")
    old = FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    AuditTrail(store, old).record(Actor("console", "alice", "192.0.2.7"), "otp.new", "three days ago")
    store.dispose()
    assert "three days ago" not in [e["target"] for e in _audit(audited_dir, "--since", "24h")]
    assert "three days ago" in [e["target"] for e in _audit(audited_dir, "--since", "7d")]
    table = run_scepd("audit", "--dir", str(audited_dir), "--since", "7d")
    assert "alice" in table.stdout and "ACTION" in table.stdout


def test_an_action_the_store_cannot_record_is_still_logged(tmp_path, caplog):
    store = Store(f"sqlite:///{tmp_path / 'never-upgraded.db'}")  # no audit_events table
    with caplog.at_level("INFO", logger="scepd.audit"):
        event = AuditTrail(store, FixedClock(dt.datetime.now(dt.UTC))).record(
            Actor("cli", "root", "pts/0 on host"), "certificate.revoke", "abc", Refusal(ErrorCode.CERTIFICATE_UNKNOWN, "no"))
    assert event.result == "CertificateUnknown"
    (record,) = [r for r in caplog.records if r.name == "scepd.audit"]
    assert record.fields["result"] == "CertificateUnknown" and record.fields["stored"].startswith("no: ")


def test_the_api_actor_names_the_token_by_its_id_only():
    actor = Actor.api("Bearer s3cret", "198.51.100.4")
    assert actor.kind == "api" and actor.address == "198.51.100.4"
    assert actor.name.startswith("token ") and "s3cret" not in actor.name and len(actor.name) == len("token ") + 12
    assert Actor.api(None, None).name == "no token"


def test_the_cli_actor_is_the_effective_user_whatever_the_environment_says(monkeypatch):
    me = pwd.getpwuid(os.geteuid()).pw_name
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(variable, "mallory")
    monkeypatch.setenv("SUDO_USER", "mallory")
    monkeypatch.delenv("SUDO_UID", raising=False)
    assert Actor.cli().name == me  # SUDO_USER without SUDO_UID: not sudo's
    monkeypatch.setenv("SUDO_UID", "1000")
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # an ordinary user who set SUDO_* themselves
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: pwd.struct_passwd(("carol", "x", uid, uid, "", "/", "/bin/sh")))
    assert Actor.cli().name == "carol"
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # root, as sudo leaves it
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: pwd.struct_passwd(("root", "x", 0, 0, "", "/", "/bin/sh")))
    assert Actor.cli().name == "root (sudo by mallory)"


class _Trail:
    def __init__(self) -> None:
        self.events = []

    def record(self, actor, action, target, result=None, detail=None):
        self.events.append((action, target, result, detail))


@pytest.mark.parametrize("outage, code", [(StoreUnavailable("the database is locked"), "StoreUnavailable"),
                                          (KeyUnavailable("the CA's token is gone"), "KeyUnavailable")])
def test_an_action_an_outage_stops_is_recorded_with_the_outages_code(outage, code):
    trail = _Trail()
    admin = Administration(store=None, templates={}, authorities=None, issuance=None, crls=None,
                           clock=FixedClock(dt.datetime.now(dt.UTC)), audit=trail)

    def fail(*_args):
        raise outage

    admin._approve = admin._deny = admin._revoke = fail
    for act in (lambda: admin.approve("T1"), lambda: admin.deny("T2", "no"), lambda: admin.revoke("ab", "keyCompromise")):
        with pytest.raises(type(outage)):
            act()
    assert trail.events == [("request.approve", "T1", code, None), ("request.deny", "T2", code, "reason: no"),
                            ("certificate.revoke", "ab", code, "reason keyCompromise")]


def test_audit_on_a_database_not_yet_upgraded_names_the_fix(tmp_path):
    create_instance(tmp_path, key_spec="rsa:2048", static_challenge=CHALLENGE)
    for path in tmp_path.glob("scepd.db*"):
        path.unlink()  # as a database restored from before the audit trail's migration would be
    listed = run_scepd("audit", "--dir", str(tmp_path))
    assert listed.returncode == 2 and "scepd db upgrade" in listed.stderr and "Traceback" not in listed.stderr
