"""scepd init, info, serve and db: making an instance, showing it, serving it, its schema."""

from __future__ import annotations

import os
from pathlib import Path

from scepd.cli.common import (
    EXIT_OK,
    actions,
    command,
    err,
    instance_dir,
    json_flag,
    open_instance,
    overrides,
    print_json,
    scep_url,
    usage,
)
from scepd.protocol.fingerprints import certificate_sha256_display


def cmd_init(args) -> int:
    from scepd.ca.keys import KeySpecError
    from scepd.registry.instance import create_instance, load_key_material

    directory = instance_dir(args)
    passphrase = os.environ.get("SCEPD_KEY_PASSPHRASE") if args.encrypt_keys else None
    if args.encrypt_keys and not passphrase:
        return usage("--encrypt-keys needs the passphrase in SCEPD_KEY_PASSPHRASE")
    if args.subordinate and args.import_ca:
        return usage("--subordinate and --import-ca exclude each other")
    if args.chain and not args.import_ca:
        return usage("--chain goes with --import-ca (for --subordinate: scepd ca install SIGNED.pem --chain CHAIN.pem)")
    if args.pkcs11 and (args.subordinate or args.import_ca):
        return usage("--pkcs11 makes a new root's keys in the token; with --import-ca give the token key's pkcs11: URI as KEY")
    secret = passphrase.encode() if passphrase else None
    try:
        if args.subordinate:
            return _init_subordinate(args, directory, secret)
        if args.import_ca:
            from scepd.registry.subordinate import import_ca

            # An imported key that is encrypted opens with SCEPD_KEY_PASSPHRASE too.
            given = os.environ.get("SCEPD_KEY_PASSPHRASE")
            instance = import_ca(directory, Path(args.import_ca[0]), Path(args.import_ca[1]),
                                 Path(args.chain) if args.chain else None,
                                 passphrase=secret, key_passphrase=given.encode() if given else None,
                                 static_challenge=args.challenge)
        else:
            instance = create_instance(directory, ca_subject=args.ca_subject or "CN=scepd Root CA", key_spec=args.key,
                                       passphrase=secret, static_challenge=args.challenge, pkcs11=args.pkcs11)
    except KeySpecError as exc:
        return usage(f"--key {exc}")
    material = load_key_material(instance)
    err(f"created instance in {directory}")
    return print_info(instance, material, args.json)


def _init_subordinate(args, directory, passphrase: bytes | None) -> int:
    from scepd.registry.subordinate import create_subordinate

    _instance, csr = create_subordinate(directory, ca_subject=args.ca_subject or "CN=scepd Issuing CA",
                                       key_spec=args.key, passphrase=passphrase, static_challenge=args.challenge)
    fix = f"scepd ca install SIGNED.pem --chain CHAIN.pem --dir {directory}"
    if args.json:
        print_json({"directory": str(directory), "request": str(csr), "complete": False, "next": fix})
    else:
        err(f"wrote the CA key and its request {csr}; have the root CA sign it (docs/pki.md), then: {fix}")
        print(csr)
    return EXIT_OK


def print_info(instance, material, as_json: bool, url: str | None = None) -> int:
    info = {
        "directory": str(instance.directory),
        "url": url or scep_url(instance.config.server.host, instance.config.server.port),
        "ca_subject": material.ca.certificate.subject.rfc4514_string(),
        "ca_sha256_fingerprint": certificate_sha256_display(material.ca.certificate),
        "ra_subject": material.ra.certificate.subject.rfc4514_string(),
        "challenge": instance.config.challenge.static or None,
        "one_time_passwords": instance.config.challenge.one_time_passwords,
        # The issuing CA first, then each certificate above it, up to the root.
        "chain": [
            {"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
             "not_after": c.not_valid_after_utc.isoformat(), "sha256_fingerprint": certificate_sha256_display(c)}
            for c in material.path_of(material.ca)
        ],
    }
    if as_json:
        print_json(info)
    else:
        err(f"  SCEP URL:        {info['url']}")
        err(f"  CA:              {info['ca_subject']}")
        err(f"  CA SHA-256:      {info['ca_sha256_fingerprint']}")
        err(f"  RA:              {info['ra_subject']}")
        err(f"  challenge:       {info['challenge'] or '(none: use scepd otp new)'}")
        for depth, link in enumerate(info["chain"]):
            err(f"  chain[{depth}]:        {link['subject']} (issuer {link['issuer']}, until {link['not_after'][:10]})")
            err(f"                   SHA-256 {link['sha256_fingerprint']}")
    return EXIT_OK


def cmd_info(args) -> int:
    from scepd.registry.instance import load_key_material

    instance = open_instance(args)
    return print_info(instance, load_key_material(instance), args.json)


def _startup_failed(instance, material) -> bool:
    """Run the start-up checks, print what is not PASS; True when one FAILs."""
    from scepd.registry.checks import FAIL, PASS
    from scepd.registry.doctor import startup_checks
    from scepd.wiring import build_validators

    store = instance.open_store()
    try:
        results = startup_checks(instance, material, store, build_validators)
    finally:
        store.dispose()
    for r in results:
        if r.status != PASS:
            err(f"{r.status} {r.name}: {r.reason}" + (f" Fix: {r.fix}" if r.fix else ""))
    return any(r.status == FAIL for r in results)


def _tls_overrides(args) -> dict[str, str]:
    """--tls, --tls-cert/--tls-key and --http-port as overrides of [server]."""
    given = {}
    if args.tls == "off":
        given.update(SCEPD_SERVER_TLS="", SCEPD_SERVER_TLS_CERT="", SCEPD_SERVER_TLS_KEY="", SCEPD_SERVER_HTTP_PORT="0")
    elif args.tls == "self":
        given.update(SCEPD_SERVER_TLS="self", SCEPD_SERVER_TLS_CERT="", SCEPD_SERVER_TLS_KEY="")
    if args.tls_cert or args.tls_key:
        # Absolute: relative paths in the configuration are the instance's, on the command line the shell's.
        given.update(SCEPD_SERVER_TLS_CERT=str(Path(args.tls_cert).resolve()) if args.tls_cert else "",
                     SCEPD_SERVER_TLS_KEY=str(Path(args.tls_key).resolve()) if args.tls_key else "")
        given.setdefault("SCEPD_SERVER_TLS", "")
    if args.http_port is not None:
        given["SCEPD_SERVER_HTTP_PORT"] = str(args.http_port)
    return given


def cmd_serve(args) -> int:
    from scepd.logs import configure
    from scepd.registry.instance import Instance, load_key_material
    from scepd.server.run import serve
    from scepd.server.tls import TlsFiles

    server = open_instance(args).config.server
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    # The workers read the configuration themselves, and again at each reload: hand them the
    # address actually served (it makes the CRL distribution point of issued certificates when
    # public_url is empty), --db and the TLS options, as overrides of the configuration.
    given = {**overrides(args), "SCEPD_SERVER_HOST": host, "SCEPD_SERVER_PORT": str(port), **_tls_overrides(args)}
    instance = Instance.open(instance_dir(args), given)
    material = load_key_material(instance)
    if _startup_failed(instance, material):  # with TLS "self": issues the certificate when due
        return usage("not serving: fix the FAIL lines above")
    server = instance.config.server
    files = server.tls_files
    url = scep_url(host, port).replace("http://", "https://", 1) if files else scep_url(host, port)
    err(f"serving SCEP on {url}" + (f", and over plain HTTP on {scep_url(host, server.http_port)}" if server.http_port else ""))
    print_info(instance, material, False, url)
    configure(instance.path(instance.config.logging.file) if instance.config.logging.file else None)
    tls = TlsFiles(instance.path(files[0]).resolve(), instance.path(files[1]).resolve()) if files else None
    renewer = _self_tls_renewer(instance, given) if server.tls == "self" else None
    try:
        serve(instance.directory.resolve(), host=host, port=port, workers=args.workers or server.workers,
              max_request_bytes=server.max_request_bytes, header_timeout=server.header_timeout_seconds, overrides=given,
              tls=tls, http_port=server.http_port, cpus=server.worker_cpus())
    finally:
        if renewer is not None:
            renewer.stop()
    return EXIT_OK


def _self_tls_renewer(instance, given: dict[str, str]):
    """The renewal of the self-issued TLS certificate while serving, in this process (the
    supervisor when there are workers: one renewer whatever their number)."""
    from scepd.registry.instance import Instance, load_key_material
    from scepd.registry.tls import SelfTlsRenewer

    def authority():
        fresh = Instance.open(instance.directory, given)
        return fresh, load_key_material(fresh).ca

    renewer = SelfTlsRenewer(instance, authority)
    renewer.start()
    return renewer


def cmd_db_upgrade(args) -> int:
    instance = open_instance(args)
    store = instance.open_store()
    before, head = store.schema_revisions()
    store.upgrade()
    err(f"database at revision {head}" + ("" if before == head else f" (was {before or 'empty'})"))
    store.dispose()
    return EXIT_OK


def add_parsers(sub) -> None:
    p = command(sub, "init", cmd_init, "create an instance: root CA (or a subordinate's CSR, or an imported CA), RA, scepd.toml, database")
    p.add_argument("--ca-subject", help="RFC 4514 subject of the CA (default: CN=scepd Root CA; CN=scepd Issuing CA with --subordinate)")
    p.add_argument("--key", default="rsa:3072", help="CA key: rsa:BITS or ec:p256|p384 (default: %(default)s)")
    p.add_argument("--challenge", help="static challenge (default: a random one)")
    p.add_argument("--encrypt-keys", action="store_true", help="encrypt key files with $SCEPD_KEY_PASSPHRASE")
    p.add_argument("--subordinate", action="store_true",
                   help="a CA under an existing root: write the CA key and ca.csr; scepd ca install completes the instance")
    p.add_argument("--import-ca", nargs=2, metavar=("CERT", "KEY"), help="use an existing issuing CA (PEM certificate and key)")
    p.add_argument("--chain", metavar="CHAIN.pem", help="with --import-ca: the CA certificates above it, up to the root")
    p.add_argument("--pkcs11", metavar="URI",
                   help="generate every key inside this PKCS#11 token (RFC 7512 URI naming module-path, token and pin-source), "
                        "never on disk; scepd.toml then names the objects ca, ra, rp-encryption and rp-signing")
    json_flag(p, "print the instance summary as JSON on stdout")

    json_flag(command(sub, "info", cmd_info, "show the SCEP URL, CA fingerprint and challenge"), "as JSON on stdout")

    p = command(sub, "serve", cmd_serve, "check the instance, then serve SCEP over HTTP or HTTPS")
    p.add_argument("--db", help="database URL, e.g. postgresql+psycopg://scepd@db/scepd (default: [database] url)")
    p.add_argument("--host", help="address to bind (default: [server] host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: [server] port, 8080)")
    p.add_argument("--workers", type=int, help="worker processes sharing the sockets (default: [server] workers)")
    p.add_argument("--tls", choices=["self", "off"],
                   help="self: HTTPS with a certificate from the instance's CA for [server] tls_names, renewed before it expires")
    p.add_argument("--tls-cert", help="HTTPS with this PEM certificate, its chain after it (default: [server] tls_cert)")
    p.add_argument("--tls-key", help="the certificate's unencrypted PEM key (default: [server] tls_key)")
    p.add_argument("--http-port", type=int, help="with HTTPS: also plain HTTP on this port, for SCEP and CRLs only (default: [server] http_port)")

    p = command(actions(sub, "db", "the database"), "upgrade", cmd_db_upgrade, "apply the schema migrations (SQLite or PostgreSQL)")
    p.add_argument("--db", help="database URL (default: [database] url)")
