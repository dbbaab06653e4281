"""scepd certs: issued certificates, and revoking them."""

from __future__ import annotations

import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scepd.cli.common import (
    EXIT_OK,
    actions,
    admin,
    cli_actor,
    command,
    err,
    json_flag,
    listing,
    open_instance,
    print_json,
    usage,
)
from scepd.protocol.errors import Refusal

# What the table of `list` shows (--json: every field).
_COLUMNS = ["serial", "status", "subject", "template", "not_after"]


def _certificate_row(r) -> dict:
    return {"serial": r.serial, "status": r.status, "subject": r.subject, "template": r.template,
            "not_after": f"{r.not_after:%Y-%m-%d}", "revoked_at": r.revoked_at, "reason": r.revocation_reason,
            "transaction_id": r.transaction_id, "renewal_of": r.renewal_of}


def cmd_certs_show(args) -> int:
    record = open_instance(args).open_store().find_certificate(args.serial)
    if record is None:
        return usage(f"no certificate with serial {args.serial}")
    if args.pem:
        cert = x509.load_der_x509_certificate(record.der)
        sys.stdout.write(cert.public_bytes(serialization.Encoding.PEM).decode())
    else:
        print_json(_certificate_row(record))
    return EXIT_OK


def cmd_certs_revoke(args) -> int:
    revoked = admin(args).revoke(args.serial, args.reason, with_renewals=args.with_renewals, actor=cli_actor())
    if isinstance(revoked, Refusal):
        return usage(f"error: {revoked.reason}")
    if args.json:
        print_json([_certificate_row(r) for r in revoked])
    else:
        for r in revoked:
            what = "" if r.serial == args.serial.lower() else f", renewal of {r.renewal_of}"
            err(f"revoked {r.serial} ({r.revocation_reason}{what}) {r.subject}")
    crls = len({r.issuer_key_id for r in revoked})
    err(f"{len(revoked)} certificate(s) revoked; {'CRL' if crls == 1 else f'{crls} CRLs'} re-signed")
    return EXIT_OK


def add_parsers(sub) -> None:
    from scepd.service.admin import REVOCATION_REASONS
    from scepd.store.states import CertificateState

    group = actions(sub, "certs", "issued certificates and revocation")
    listing(group, "certificates, newest first", CertificateState, lambda store: store.list_certificates,
            _certificate_row, _COLUMNS)
    p = command(group, "show", cmd_certs_show, "one certificate")
    p.add_argument("serial", help="serial number in hex")
    p.add_argument("--pem", action="store_true", help="print the certificate as PEM")
    p = command(group, "revoke", cmd_certs_revoke, "revoke a certificate and re-sign the CRL")
    p.add_argument("serial", help="serial number in hex")
    p.add_argument("--reason", default="unspecified", choices=sorted(REVOCATION_REASONS))
    p.add_argument("--with-renewals", action="store_true",
                   help="also revoke every certificate renewed from it, and their renewals")
    json_flag(p, "what was revoked, as JSON on stdout")
