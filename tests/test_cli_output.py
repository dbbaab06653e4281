"""The command line for people and for scripts: peer-supplied text escaped before it reaches a
terminal, API tokens listed and revoked, a certificate revoked with its renewals. Through a
running `scepd serve` and the `scepd` command, as an administrator uses them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import unicodedata

import httpx
import pytest
from conftest import CHALLENGE, RunningServer, run_scepd
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from scepd.cli import shown
from scepd.client import ScepClient
from scepd.client.client import self_signed
from scepd.protocol import PkiStatus
from scepd.registry.config import update_config_file
from scepd.registry.instance import Instance, create_instance
from scepd.store import CertificateRecord, TransactionRecord

ENCRYPT_ONLY = x509.KeyUsage(False, False, True, False, False, False, False, False, False)

# A transactionID is a PrintableString, which asn1crypto reads as Latin-1: C0 and C1 controls
# get through, U+202E cannot. ESC ] 0 ; ... BEL retitles an xterm, CR LF starts a forged log
# line, U+0085 (NEL) and U+009B (CSI) are the C1 forms.
HOSTILE_ID = "tx\x1b]0;pwned\x07\r\nFORGED 2026-01-01 00:00:00  info\x85\x9b2J"
# Subjects and reasons are UTF-8: the bidi override and the line separator too.
HOSTILE_TEXT = "x\x1b[31mred\x1b[0m\r\nFORGED line \u202egnp.exe\u2028after\u2029\x7f\x9b"

# What a terminal acts on: controls (C0, DEL, C1), format characters (bidi overrides,
# zero-width), line and paragraph separators, lone surrogates.
ACTED_ON = ("Cc", "Cf", "Zl", "Zp", "Cs")


def raw_controls(text: str) -> list[str]:
    """The characters of `text` a terminal would act on, apart from the line ends print adds."""
    return sorted({c for c in text if c != "\n" and unicodedata.category(c) in ACTED_ON})


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key():
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    """An instance whose encryption-only requests wait for approval (so that one can be denied)."""
    d = tmp_path_factory.mktemp("cli-output")
    create_instance(d, ca_subject="CN=CLI output CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"templates": {"Manual": {"approval": "manual"}},
                                          "template_mapping": {"EncryptionTemplate": "Manual"}})
    return d


@pytest.fixture(scope="module")
def srv(cli_dir):
    server = RunningServer(cli_dir)
    yield server
    server.stop()


def scepd(directory, *args):
    return run_scepd(*args, "--dir", str(directory))


def wait_for(predicate, timeout: float = 15.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


# --- peer-supplied text, escaped for people -------------------------------------------------


def test_shown_escapes_what_a_terminal_acts_on_and_keeps_the_rest():
    assert shown("\x1b]0;t\x07") == "\\x1b]0;t\\x07"
    assert shown("a\r\nb\tc\x7f\x85\x9b") == "a\\r\\nb\\tc\\x7f\\x85\\x9b"
    assert shown("evil\u202egnp.exe \u2066x\u2069 \u2028\u2029 zero\u200bwidth") == (
        "evil\\u202egnp.exe \\u2066x\\u2069 \\u2028\\u2029 zero\\u200bwidth")
    assert shown("lone \udc80") == "lone \\udc80"  # would not even encode
    assert shown("CN=Zoë Müller,O=東京 \\, ok") == "CN=Zoë Müller,O=東京 \\, ok"  # printable text as it is
    assert shown(None) == "None" and shown(42) == "42"


def test_the_client_shows_a_servers_refusal_escaped_and_the_server_logs_stay_lines(srv, cli_dir, tmp_path):
    """`scepd client enroll` prints the failInfoText a server sends, which is the server's to
    choose (here an administrator's denial reason, polled for): escaped like every CLI output.
    The server's own log (file and stderr) holds the same text as JSON, one line a record."""
    import subprocess

    from conftest import SCEPD

    cn = "CN=escaped-poller"
    poller = subprocess.Popen(
        [*SCEPD, "client", "enroll", srv.url, "--subject", cn, "--challenge", CHALLENGE, "--key-usage", "keyEncipherment",
         "--poll-interval", "1", "--max-poll-time", "30", "--cert-out", str(tmp_path / "cert.pem")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def pending_id():
            listed = json.loads(scepd(cli_dir, "requests", "list", "--status", "pending", "--json").stdout)
            return next((r["transaction_id"] for r in listed if r["subject"] == cn), None)

        wait_for(lambda: pending_id() is not None, what="the client's pending request")
        assert scepd(cli_dir, "requests", "deny", pending_id(), "--reason", f"denied {HOSTILE_TEXT}").returncode == 0
        out, errors = poller.communicate(timeout=30)
    finally:
        poller.kill()
    assert poller.returncode != 0
    assert "RequestDenied" in errors and "\\x1b[31mred" in errors, errors  # shown, not dropped
    assert raw_controls(out) == [] and raw_controls(errors) == [], errors
    assert not any(line.startswith("FORGED") for line in errors.splitlines())
    for log in (cli_dir / "scepd.log", srv.stderr_path):
        text = log.read_text(encoding="utf-8")
        assert raw_controls(text) == [], log
        assert not any(line.startswith("FORGED") for line in text.splitlines()), log


def _store_hostile_records(directory) -> tuple[str, str]:
    """A certificate and a request whose subjects hold controls, bidi override and separators,
    as a database written before subjects were checked (or by another tool) holds them."""
    key = new_key()
    cert = self_signed(key, name("stored"))
    der = cert.public_bytes(Encoding.DER)
    now = dt.datetime.now(dt.timezone.utc)
    serial = "c0ffee" + hashlib.sha256(der).hexdigest()[:10]
    store = Instance.open(directory).open_store()
    try:
        with store.unit_of_work() as uow:
            uow.add_certificate(CertificateRecord(
                serial=serial, issuer_key_id="00", subject=f"CN={HOSTILE_TEXT}", template="IPSECIntermediateOffline",
                not_before=now, not_after=now + dt.timedelta(days=1), sha256=hashlib.sha256(der).hexdigest(), der=der,
                transaction_id=HOSTILE_ID + "-stored"))
            uow.add_transaction(TransactionRecord(
                transaction_id=f"stored{HOSTILE_TEXT}", message_type="PKCS_REQ", status="denied",
                subject=f"CN={HOSTILE_TEXT}", template="Manual", public_key_sha256="0" * 64,
                signer_key_sha256="0" * 64, csr_der=b"\x30\x00", client=f"client{HOSTILE_TEXT}",
                reason=f"reason{HOSTILE_TEXT}"))
    finally:
        store.dispose()
    return serial, f"stored{HOSTILE_TEXT}"


def test_peer_strings_reach_the_terminal_escaped(srv, cli_dir):
    with ScepClient(srv.url) as client:
        # Through HTTP: an issued certificate and a pending request, both under hostile IDs.
        issued = client.enroll(new_key(), name("escaped-issued"), challenge=CHALLENGE, transaction_id=HOSTILE_ID)
        assert issued.status is PkiStatus.SUCCESS, issued.fail_info_text
        pending = client.enroll(new_key(), name("escaped-pending"), challenge=CHALLENGE, key_usage=ENCRYPT_ONLY,
                                transaction_id=HOSTILE_ID + "-pending")
        assert pending.status is PkiStatus.PENDING, pending.fail_info_text
    denied = scepd(cli_dir, "requests", "deny", HOSTILE_ID + "-pending", "--reason", f"denied {HOSTILE_TEXT}")
    assert denied.returncode == 0, denied.stderr
    assert raw_controls(denied.stderr) == [] and "\\x1b" in denied.stderr
    stored_serial, stored_id = _store_hostile_records(cli_dir)
    wait_for(lambda: any("FORGED" in line for line in srv.log_lines()), what="the server's log line")
    issued_serial = format(issued.certificate.serial_number, "x")

    human = {
        "logs": scepd(cli_dir, "logs"),
        "logs --transaction": scepd(cli_dir, "logs", "--transaction", HOSTILE_ID),
        "certs list": scepd(cli_dir, "certs", "list"),
        "certs show (HTTP)": scepd(cli_dir, "certs", "show", issued_serial),
        "certs show (stored)": scepd(cli_dir, "certs", "show", stored_serial),
        "requests list": scepd(cli_dir, "requests", "list"),
        "requests show (HTTP)": scepd(cli_dir, "requests", "show", HOSTILE_ID + "-pending"),
        "requests show (stored)": scepd(cli_dir, "requests", "show", stored_id),
    }
    for what, result in human.items():
        assert result.returncode == 0, (what, result.stderr)
        assert raw_controls(result.stdout) == [], (what, result.stdout)
        assert raw_controls(result.stderr) == [], (what, result.stderr)
        assert "\\x1b" in result.stdout or "\\u001b" in result.stdout, (what, result.stdout)  # shown, not dropped
        # No line of output begins where a peer's CR LF would have begun one.
        assert not any(line.startswith("FORGED") for line in result.stdout.splitlines()), (what, result.stdout)
    assert "\\u202egnp.exe" in human["certs list"].stdout and "\\u2028after" in human["requests list"].stdout
    lines = human["logs --transaction"].stdout.splitlines()
    assert len(lines) == 1 and "transaction_id=tx\\x1b]0;pwned\\x07\\r\\nFORGED" in lines[0], lines

    # JSON stays JSON: ASCII only (C1 and bidi escaped too), and the values come back exact.
    as_json = {
        "certs list": scepd(cli_dir, "certs", "list", "--json"),
        "requests list": scepd(cli_dir, "requests", "list", "--json"),
        "logs": scepd(cli_dir, "logs", "--json", "--transaction", HOSTILE_ID),
    }
    for what, result in as_json.items():
        assert result.returncode == 0 and raw_controls(result.stdout) == [], (what, result.stdout)
        assert result.stdout.isascii(), what
    certs = json.loads(as_json["certs list"].stdout)
    assert {c["subject"] for c in certs if c["serial"] == stored_serial} == {f"CN={HOSTILE_TEXT}"}
    requests = {r["transaction_id"]: r for r in json.loads(as_json["requests list"].stdout)}
    assert requests[HOSTILE_ID + "-pending"]["reason"] == f"denied {HOSTILE_TEXT}"
    assert requests[stored_id]["client"] == f"client{HOSTILE_TEXT}"
    assert json.loads(as_json["logs"].stdout.splitlines()[0])["transaction_id"] == HOSTILE_ID
    assert json.loads(human["requests show (HTTP)"].stdout)["transaction_id"] == HOSTILE_ID + "-pending"


# --- API tokens -------------------------------------------------------------------------------


def _api(srv, token: str) -> int:
    response = httpx.post(f"http://127.0.0.1:{srv.port}/api/v1/challenges", json={"subject": "CN=token-check"},
                          headers={"Authorization": f"Bearer {token}"})
    return response.status_code


def test_a_revoked_api_token_is_refused_by_the_running_server_and_the_other_still_works(srv, cli_dir):
    first = scepd(cli_dir, "registry", "token", "new").stdout.strip()
    second = scepd(cli_dir, "registry", "token", "new").stdout.strip()
    listed = scepd(cli_dir, "registry", "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    ids = {t["id"]: t for t in json.loads(listed.stdout)}
    first_id, second_id = (hashlib.sha256(t.encode()).hexdigest()[:12] for t in (first, second))
    assert {first_id, second_id} <= set(ids) and ids[first_id]["source"] == "scepd.toml"
    table = scepd(cli_dir, "registry", "token", "list").stdout
    assert first_id in table and second_id in table
    config = (cli_dir / "scepd.toml").read_text()
    assert first not in config and second not in config  # only hashes are stored
    wait_for(lambda: _api(srv, first) == 201 and _api(srv, second) == 201, what="both tokens accepted")

    revoked = scepd(cli_dir, "registry", "token", "revoke", first_id[:6])  # an ID prefix will do
    assert revoked.returncode == 0, revoked.stderr
    assert first_id in revoked.stderr
    wait_for(lambda: _api(srv, first) == 401, what="the revoked token refused")
    assert _api(srv, second) == 201
    remaining = {t["id"] for t in json.loads(scepd(cli_dir, "registry", "token", "list", "--json").stdout)}
    assert first_id not in remaining and second_id in remaining


def test_token_revoke_refuses_an_unknown_ambiguous_or_short_id(tmp_path):
    d = tmp_path / "tokens"
    create_instance(d, ca_subject="CN=Token CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    twins = ("abcd0" + "0" * 59, "abcd1" + "1" * 59)  # digests sharing a prefix, as stored
    update_config_file(d / "scepd.toml", {"registration_point": {"api_tokens": twins}})

    ambiguous = scepd(d, "registry", "token", "revoke", "abcd")
    assert ambiguous.returncode == 2 and "give more digits" in ambiguous.stderr, ambiguous.stderr
    unknown = scepd(d, "registry", "token", "revoke", "ffff")
    assert unknown.returncode == 2 and "no API token" in unknown.stderr, unknown.stderr
    short = scepd(d, "registry", "token", "revoke", "ab")
    assert short.returncode == 2 and "at least 4 hex digits" in short.stderr, short.stderr
    assert {t["sha256"] for t in json.loads(scepd(d, "registry", "token", "list", "--json").stdout)} == set(twins)

    # Tokens set by the environment override the file: revoking in the file would change nothing.
    overridden = run_scepd("registry", "token", "revoke", "abcd1", "--dir", str(d),
                           env={"SCEPD_REGISTRATION_POINT_API_TOKENS": twins[1]})
    assert overridden.returncode == 2 and "SCEPD_REGISTRATION_POINT_API_TOKENS" in overridden.stderr
    assert scepd(d, "registry", "token", "revoke", "abcd1").returncode == 0
    assert [t["sha256"] for t in json.loads(scepd(d, "registry", "token", "list", "--json").stdout)] == [twins[0]]


# --- revocation with renewals -----------------------------------------------------------------


def _crl(srv, cli_dir) -> x509.CertificateRevocationList:
    ca = x509.load_pem_x509_certificate((cli_dir / "ca.pem").read_bytes())
    key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    response = httpx.get(f"http://127.0.0.1:{srv.port}/crl/{key_id}.crl")
    assert response.status_code == 200, response.text
    return x509.load_der_x509_crl(response.content)


def _crl_number(crl) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _serial(cert) -> str:
    return format(cert.serial_number, "x")


def test_revoking_with_renewals_revokes_the_whole_renewal_tree_and_signs_the_crl_once(srv, cli_dir):
    with ScepClient(srv.url) as client:
        def enroll(cn):
            key = new_key()
            result = client.enroll(key, name(cn), challenge=CHALLENGE)
            assert result.status is PkiStatus.SUCCESS, result.fail_info_text
            return result.certificate, key

        def renew(old):
            key = new_key()
            result = client.enroll(key, old[0].subject, signer=old, renewal=True)  # RenewalReq signed by `old`
            assert result.status is PkiStatus.SUCCESS, result.fail_info_text
            return result.certificate, key

        first = enroll("renewed-device")
        second = renew(first)
        third = renew(second)  # a renewal of a renewal
        sibling = renew(first)  # the first renewed twice: a tree, not only a chain
        bystander = enroll("bystander")
    tree = [first, second, third, sibling]
    shown_before = json.loads(scepd(cli_dir, "certs", "show", _serial(third[0])).stdout)
    assert shown_before["renewal_of"] == _serial(second[0])
    number_before = _crl_number(_crl(srv, cli_dir))

    result = scepd(cli_dir, "certs", "revoke", _serial(first[0]), "--reason", "keyCompromise", "--with-renewals", "--json")
    assert result.returncode == 0, result.stderr
    revoked = json.loads(result.stdout)
    assert [r["serial"] for r in revoked] == [_serial(c) for c, _ in tree]  # the certificate, then oldest first
    assert {(r["status"], r["reason"]) for r in revoked} == {("revoked", "keyCompromise")}
    assert "4 certificate(s) revoked" in result.stderr

    crl = _crl(srv, cli_dir)
    assert _crl_number(crl) == number_before + 1  # one new CRL for the four revocations
    for cert, _ in tree:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        assert entry is not None, _serial(cert)
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(bystander[0].serial_number) is None

    again = scepd(cli_dir, "certs", "revoke", _serial(first[0]), "--with-renewals")
    assert again.returncode == 2 and "so are its renewals" in again.stderr, again.stderr


def test_with_renewals_reaches_the_renewals_of_a_certificate_revoked_alone_before(srv, cli_dir):
    with ScepClient(srv.url) as client:
        key = new_key()
        first = client.enroll(key, name("revoked-alone"), challenge=CHALLENGE)
        renewed = client.enroll(new_key(), name("revoked-alone"), signer=(first.certificate, key), renewal=True)
        assert renewed.status is PkiStatus.SUCCESS, renewed.fail_info_text
    alone = scepd(cli_dir, "certs", "revoke", _serial(first.certificate), "--reason", "superseded")
    assert alone.returncode == 0, alone.stderr
    crl = _crl(srv, cli_dir)
    assert crl.get_revoked_certificate_by_serial_number(renewed.certificate.serial_number) is None  # only what was asked

    result = scepd(cli_dir, "certs", "revoke", _serial(first.certificate), "--reason", "cessationOfOperation",
                   "--with-renewals")
    assert result.returncode == 0, result.stderr
    assert f"revoked {_serial(renewed.certificate)} (cessationOfOperation, renewal of {_serial(first.certificate)})" in result.stderr
    crl = _crl(srv, cli_dir)
    assert crl.get_revoked_certificate_by_serial_number(renewed.certificate.serial_number) is not None
    kept = crl.get_revoked_certificate_by_serial_number(first.certificate.serial_number)
    assert kept.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.superseded


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_renewals_of_follows_a_tree_and_ends_on_a_loop(engine, tmp_path, request):
    from scepd.store import Store

    url = request.getfixturevalue("fresh_postgres") if engine == "postgresql" else f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    store.upgrade()
    now = dt.datetime.now(dt.timezone.utc)
    # a <- b <- c, a <- d (two renewals of a), e alone; x <- y <- x, a loop only a corrupt database holds.
    parents = {"a": None, "b": "a", "c": "b", "d": "a", "e": None, "x": "y", "y": "x"}
    try:
        with store.unit_of_work() as uow:
            for i, (serial, parent) in enumerate(parents.items()):
                uow.add_certificate(CertificateRecord(
                    serial=serial, issuer_key_id="00", subject=f"CN={serial}", template="t",
                    not_before=now, not_after=now + dt.timedelta(days=1), sha256=f"{i:064x}", der=b"",
                    renewal_of=parent))
        assert [r.serial for r in store.renewals_of("A")] == ["b", "c", "d"]  # serials are matched as stored: lower case
        assert [r.serial for r in store.renewals_of("b")] == ["c"]
        assert store.renewals_of("e") == [] and store.renewals_of("zz") == []
        assert [r.serial for r in store.renewals_of("x")] == ["y"]
    finally:
        store.dispose()
