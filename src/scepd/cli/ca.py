"""scepd ca and scepd ra: CA rollover and RA renewal."""

from __future__ import annotations

from cryptography import x509

from scepd.cli.common import EXIT_OK, actions, command, err, open_instance
from scepd.protocol.fingerprints import certificate_sha256_display


def cmd_ca_rollover(args) -> int:
    from scepd.registry.instance import load_key_material
    from scepd.registry.keyops import rollover

    instance = open_instance(args)
    path = rollover(instance, load_key_material(instance), args.key)
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    err(f"next CA written to {path}; GetNextCACert offers it. Activate with: scepd ca activate-next")
    print(certificate_sha256_display(cert))
    return EXIT_OK


def cmd_ca_activate_next(args) -> int:
    from scepd.registry.keyops import activate_next

    activate_next(open_instance(args))
    err("the next CA issues from now on; the previous one stays in GetCACert and keeps its CRL")
    return EXIT_OK


def cmd_ra_renew(args) -> int:
    from scepd.registry.instance import load_key_material
    from scepd.registry.keyops import renew_ra

    instance = open_instance(args)
    path = renew_ra(instance, load_key_material(instance), args.validity_days)
    err(f"new RA certificate {path}; running servers switch within seconds, the old RA still decrypts")
    return EXIT_OK


def add_parsers(sub) -> None:
    group = actions(sub, "ca", "CA rollover")
    p = command(group, "rollover", cmd_ca_rollover, "create the next CA (and RA); GetNextCACert offers it")
    p.add_argument("--key", help="key of the next CA (default: same type and size as now)")
    command(group, "activate-next", cmd_ca_activate_next, "issue from the next CA; the current one stays trusted")

    group = actions(sub, "ra", "the RA certificate")
    p = command(group, "renew", cmd_ra_renew, "new RA key and certificate, picked up by running servers")
    p.add_argument("--validity-days", type=int, default=730)
