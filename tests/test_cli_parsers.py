"""The command line's parsers, one module per command group, and what the CLI used to do
itself and now asks the registry for (trusting signers, setting entries) or the server
runner (handing the instance to its worker processes)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pickle

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scepd.cli import build_parser, main
from scepd.protocol.fingerprints import jose_thumbprint
from scepd.registry.config import CONFIG_FILE, ConfigError
from scepd.registry.instance import Instance, create_instance
from scepd.registry.rp import EntryError, TrustError, load_rp_material, set_entry, trust_add, trust_remove


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """Every command path of the parser tree, the groups as well as the leaves."""
    yield words
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*words, name))


COMMANDS = list(_commands(build_parser()))


def test_the_tree_has_every_command_group():
    top = {words[0] for words in COMMANDS if words}
    assert top == {"init", "info", "serve", "db", "otp", "templates", "requests", "certs", "ca", "ra", "doctor",
                   "logs", "challenge", "profile", "registry", "intune", "client", "audit", "admin"}
    assert ("registry", "trust", "remove") in COMMANDS and ("client", "enroll") in COMMANDS


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "scepd")
def test_every_command_has_help(words, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: scepd {' '.join(words)}".rstrip())


def test_every_leaf_command_runs_something():
    parser = build_parser()
    leaves = [w for w in COMMANDS if w and not any(len(o) > len(w) and o[: len(w)] == w for o in COMMANDS)]
    assert len(leaves) > 30
    for words in leaves:
        positional = {("templates", "show"): ["x"], ("requests", "show"): ["x"], ("requests", "approve"): ["x"],
                      ("requests", "deny"): ["x"], ("certs", "show"): ["1"], ("certs", "revoke"): ["1"],
                      ("registry", "set"): ["k", "v"], ("registry", "trust", "add"): ["c.pem"],
                      ("registry", "trust", "remove"): ["c"], ("registry", "token", "revoke"): ["abcd"],
                      ("profile", "apple"): ["--subject", "CN=x"], ("admin", "add"): ["x"],
                      ("admin", "passwd"): ["x"], ("admin", "remove"): ["x"],
                      ("ca", "install"): ["signed.pem"], ("ra", "import"): ["ra.pem", "ra.key"]}.get(words, [])
        if words[0] == "client":
            positional = ["http://127.0.0.1:1/scep"]
        args = parser.parse_args([*words, *positional])
        assert callable(args.func), words


# --- the registry, without the CLI ------------------------------------------------------------


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("registry") / "inst"
    create_instance(directory, key_spec="ec:p256")
    return directory


def _mdm_certificate(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))


def test_trust_add_keeps_the_certificate_and_lists_it_once(instance_dir):
    cert = _mdm_certificate("MDM one")
    added = trust_add(Instance.open(instance_dir), cert)
    assert added.newly_listed and added.name.startswith("rp/trusted/") and added.name.endswith(".pem")
    assert x509.load_pem_x509_certificate((instance_dir / added.name).read_bytes()) == cert
    instance = Instance.open(instance_dir)
    assert added.name in instance.config.registration_point.trusted_signers
    assert cert in load_rp_material(instance).trusted  # what the MDM challenge validator trusts

    again = trust_add(instance, cert)
    assert again.name == added.name and not again.newly_listed
    assert Instance.open(instance_dir).config.registration_point.trusted_signers.count(added.name) == 1


@pytest.mark.parametrize("by", ["thumbprint", "file name", "entry"])
def test_trust_remove_by_thumbprint_file_name_or_entry(instance_dir, by):
    cert = _mdm_certificate(f"MDM removed by {by}")
    name = trust_add(Instance.open(instance_dir), cert).name
    which = {"thumbprint": jose_thumbprint(cert), "file name": name.rsplit("/", 1)[1], "entry": name}[by]
    assert trust_remove(Instance.open(instance_dir), which) == (name,)
    instance = Instance.open(instance_dir)
    assert name not in instance.config.registration_point.trusted_signers
    assert cert not in load_rp_material(instance).trusted
    assert (instance_dir / name).exists()  # kept for the record


def test_trust_remove_of_an_unknown_signer_changes_nothing(instance_dir):
    before = (instance_dir / CONFIG_FILE).read_bytes()
    with pytest.raises(TrustError, match="no trusted signer 'nobody'; trusted: "):
        trust_remove(Instance.open(instance_dir), "nobody")
    assert (instance_dir / CONFIG_FILE).read_bytes() == before


def test_set_entry_sets_and_refuses_by_name(instance_dir):
    instance = Instance.open(instance_dir)
    assert set_entry(instance, "clock_skew", "2m") == ("registration_point", "clock_skew")
    assert Instance.open(instance_dir).config.registration_point.clock_skew == "2m"
    template = sorted(instance.config.templates)[0]
    assert set_entry(instance, "SignatureTemplate", template) == ("template_mapping", "SignatureTemplate")
    assert Instance.open(instance_dir).config.template_mapping.SignatureTemplate == template

    before = (instance_dir / CONFIG_FILE).read_bytes()
    with pytest.raises(EntryError, match="unknown entry 'api_tokens'"):
        set_entry(instance, "api_tokens", "x")  # secrets are made by their commands, never typed in
    with pytest.raises(EntryError, match="no template 'NoSuchTemplate'"):
        set_entry(instance, "EncryptionTemplate", "NoSuchTemplate")
    with pytest.raises(ConfigError):
        set_entry(instance, "clock_skew", "soon")
    assert (instance_dir / CONFIG_FILE).read_bytes() == before


def test_registry_set_over_the_command_line(instance_dir, capsys):
    assert main(["registry", "set", "challenge_lifetime", "30m", "--dir", str(instance_dir)]) == 0
    assert "[registration_point] challenge_lifetime = 30m" in capsys.readouterr().err
    assert Instance.open(instance_dir).config.registration_point.challenge_lifetime == "30m"
    assert main(["registry", "set", "nonsense", "1", "--dir", str(instance_dir)]) == 2
    assert "unknown entry 'nonsense'" in capsys.readouterr().err


# --- scepd serve hands its worker processes the directory, not the environment ---------------


def test_serve_gives_the_workers_a_picklable_factory_of_the_directory(tmp_path, monkeypatch):
    from scepd.server import run
    from scepd.server.app import create_app_for_directory

    monkeypatch.delenv("SCEPD_DIR", raising=False)
    seen = {}

    class Supervisor:  # in place of uvicorn's Multiprocess: what it would send to each worker
        def __init__(self, config, sockets):
            seen["config"] = pickle.loads(pickle.dumps(config))  # as the spawned processes get it
            for sock in sockets:
                sock.close()

        def run(self):
            pass

    monkeypatch.setattr(run, "Multiprocess", Supervisor)
    given = {"SCEPD_SERVER_PORT": "0", "SCEPD_DATABASE_URL": "sqlite:///elsewhere.db"}
    run.serve(tmp_path, host="127.0.0.1", port=0, workers=2, max_request_bytes=65536, header_timeout=3.5, overrides=given)
    config = seen["config"]
    # The overrides travel in the factory, not in this process's environment.
    assert config.factory and config.app.func is create_app_for_directory and config.app.args == (tmp_path, given)
    assert "SCEPD_DATABASE_URL" not in os.environ
    assert config.scepd_header_timeout == 3.5
