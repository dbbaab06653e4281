"""scepd init, info, serve and db: making an instance, showing it, serving it, its schema."""

from __future__ import annotations

import os

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
    try:
        instance = create_instance(
            directory,
            ca_subject=args.ca_subject,
            key_spec=args.key,
            passphrase=passphrase.encode() if passphrase else None,
            static_challenge=args.challenge,
        )
    except KeySpecError as exc:
        return usage(f"--key {exc}")
    material = load_key_material(instance)
    err(f"created instance in {directory}")
    return print_info(instance, material, args.json)


def print_info(instance, material, as_json: bool, url: str | None = None) -> int:
    info = {
        "directory": str(instance.directory),
        "url": url or scep_url(instance.config.server.host, instance.config.server.port),
        "ca_subject": material.ca.certificate.subject.rfc4514_string(),
        "ca_sha256_fingerprint": certificate_sha256_display(material.ca.certificate),
        "ra_subject": material.ra.certificate.subject.rfc4514_string(),
        "challenge": instance.config.challenge.static or None,
        "one_time_passwords": instance.config.challenge.one_time_passwords,
    }
    if as_json:
        print_json(info)
    else:
        err(f"  SCEP URL:        {info['url']}")
        err(f"  CA:              {info['ca_subject']}")
        err(f"  CA SHA-256:      {info['ca_sha256_fingerprint']}")
        err(f"  RA:              {info['ra_subject']}")
        err(f"  challenge:       {info['challenge'] or '(none: use scepd otp new)'}")
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


def cmd_serve(args) -> int:
    from scepd.logs import configure
    from scepd.registry.instance import load_key_material
    from scepd.server.run import serve

    instance = open_instance(args)
    material = load_key_material(instance)
    if _startup_failed(instance, material):
        return usage("not serving: fix the FAIL lines above")
    server = instance.config.server
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    err(f"serving SCEP on {scep_url(host, port)}")
    print_info(instance, material, False, scep_url(host, port))
    # The workers read the configuration themselves, and again at each reload: hand them the
    # address actually served (it makes the CRL distribution point of issued certificates when
    # public_url is empty) and --db, as overrides of the configuration.
    given = {**overrides(args), "SCEPD_SERVER_HOST": host, "SCEPD_SERVER_PORT": str(port)}
    configure(instance.path(instance.config.logging.file) if instance.config.logging.file else None)
    serve(instance.directory.resolve(), host=host, port=port, workers=args.workers or server.workers,
          max_request_bytes=server.max_request_bytes, header_timeout=server.header_timeout_seconds, overrides=given)
    return EXIT_OK


def cmd_db_upgrade(args) -> int:
    instance = open_instance(args)
    store = instance.open_store()
    before, head = store.schema_revisions()
    store.upgrade()
    err(f"database at revision {head}" + ("" if before == head else f" (was {before or 'empty'})"))
    store.dispose()
    return EXIT_OK


def add_parsers(sub) -> None:
    p = command(sub, "init", cmd_init, "create an instance: root CA, RA, scepd.toml, database")
    p.add_argument("--ca-subject", default="CN=scepd Root CA", help="RFC 4514 subject of the CA (default: %(default)s)")
    p.add_argument("--key", default="rsa:3072", help="CA key: rsa:BITS or ec:p256|p384 (default: %(default)s)")
    p.add_argument("--challenge", help="static challenge (default: a random one)")
    p.add_argument("--encrypt-keys", action="store_true", help="encrypt key files with $SCEPD_KEY_PASSPHRASE")
    json_flag(p, "print the instance summary as JSON on stdout")

    json_flag(command(sub, "info", cmd_info, "show the SCEP URL, CA fingerprint and challenge"), "as JSON on stdout")

    p = command(sub, "serve", cmd_serve, "check the instance, then serve SCEP over HTTP")
    p.add_argument("--db", help="database URL, e.g. postgresql+psycopg://scepd@db/scepd (default: [database] url)")
    p.add_argument("--host", help="address to bind (default: [server] host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: [server] port, 8080)")
    p.add_argument("--workers", type=int, help="worker processes sharing the socket (default: [server] workers)")

    p = command(actions(sub, "db", "the database"), "upgrade", cmd_db_upgrade, "apply the schema migrations (SQLite or PostgreSQL)")
    p.add_argument("--db", help="database URL (default: [database] url)")
