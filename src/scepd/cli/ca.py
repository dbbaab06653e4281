"""scepd ca and scepd ra: CA rollover, a subordinate CA's certificate, RA renewal and import."""

from __future__ import annotations

from cryptography import x509

from scepd.cli.common import EXIT_OK, actions, audited, command, err, open_instance
from scepd.protocol.fingerprints import certificate_sha256_display


@audited("ca.rollover", lambda args: args.key or "same key type")
def cmd_ca_rollover(args) -> int:
    from scepd.ca.chain import is_self_signed
    from scepd.registry.instance import load_key_material
    from scepd.registry.keyops import rollover
    from scepd.registry.subordinate import request_next_ca

    instance = open_instance(args)
    material = load_key_material(instance)
    if not is_self_signed(material.ca.certificate):
        # Under someone else's root the next CA is theirs to sign: a CSR, not a new root.
        csr = request_next_ca(instance, material, args.key)
        err(f"next CA's request written to {csr}; have the root sign it (docs/pki.md), then: "
            f"scepd ca install --next SIGNED.pem --chain CHAIN.pem --dir {instance.directory}")
        print(csr)
        return EXIT_OK
    path = rollover(instance, material, args.key)
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    err(f"next CA written to {path}; GetNextCACert offers it. Activate with: scepd ca activate-next")
    print(certificate_sha256_display(cert))
    return EXIT_OK


@audited("ca.activate_next")
def cmd_ca_activate_next(args) -> int:
    from scepd.registry.instance import InstanceError
    from scepd.registry.keyops import activate_next

    instance = open_instance(args)
    if instance.config.ca.next_request and not instance.config.ca.next_certificate:
        raise InstanceError("[ca] next_request", f"the next CA awaits its certificate ({instance.path(instance.config.ca.next_request)})",
                            f"scepd ca install --next SIGNED.pem --chain CHAIN.pem --dir {instance.directory}")
    activate_next(instance)
    err("the next CA issues from now on; the previous one stays in GetCACert and keeps its CRL")
    return EXIT_OK


@audited("ra.renew", lambda args: f"{args.validity_days} days")
def cmd_ra_renew(args) -> int:
    from scepd.registry.instance import load_key_material
    from scepd.registry.keyops import renew_ra

    instance = open_instance(args)
    path = renew_ra(instance, load_key_material(instance), args.validity_days)
    err(f"new RA certificate {path}; running servers switch within seconds, the old RA still decrypts")
    return EXIT_OK


@audited("ca.install", lambda args: str(args.certificate))
def cmd_ca_install(args) -> int:
    from pathlib import Path

    from scepd.registry.subordinate import install_ca

    instance = open_instance(args)
    pair = install_ca(instance, Path(args.certificate), Path(args.chain) if args.chain else None, next=args.next)
    if args.next:
        err("the next CA is installed; GetNextCACert offers it. Activate with: scepd ca activate-next")
    else:
        err(f"CA certificate installed: the instance in {instance.directory} is complete (RA, database); serve it with scepd serve")
    print(certificate_sha256_display(pair.certificate))
    return EXIT_OK


@audited("ra.import", lambda args: str(args.certificate))
def cmd_ra_import(args) -> int:
    from pathlib import Path

    from scepd.registry.instance import load_key_material
    from scepd.registry.subordinate import import_ra

    instance = open_instance(args)
    path = import_ra(instance, load_key_material(instance), Path(args.certificate), Path(args.key))
    err(f"RA certificate imported as {path}; running servers switch within seconds, the old RA still decrypts")
    return EXIT_OK


def add_parsers(sub) -> None:
    group = actions(sub, "ca", "CA rollover, a CA certificate signed by another root")
    p = command(group, "install", cmd_ca_install, "take the CA certificate the root signed for ca.csr (or --next: ca-next.csr)")
    p.add_argument("certificate", metavar="SIGNED.pem", help="the signed CA certificate (PEM; may be followed by its chain)")
    p.add_argument("--chain", metavar="CHAIN.pem", help="the CA certificates above it, up to the self-signed root (PEM)")
    p.add_argument("--next", action="store_true", help="the certificate of the next CA (after scepd ca rollover)")
    p = command(group, "rollover", cmd_ca_rollover, "create the next CA (and RA); GetNextCACert offers it")
    p.add_argument("--key", help="key of the next CA (default: same type and size as now)")
    command(group, "activate-next", cmd_ca_activate_next, "issue from the next CA; the current one stays trusted")

    group = actions(sub, "ra", "the RA certificate")
    p = command(group, "renew", cmd_ra_renew, "new RA key and certificate, picked up by running servers")
    p.add_argument("--validity-days", type=int, default=730)
    p = command(group, "import", cmd_ra_import, "use an RA certificate issued by our CA (RSA key) with its key")
    p.add_argument("certificate", metavar="CERT", help="the RA certificate (PEM)")
    p.add_argument("key", metavar="KEY", help="its private key (PEM; $SCEPD_KEY_PASSPHRASE when encrypted)")
