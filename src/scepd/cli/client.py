"""scepd client: the SCEP client against any server (getcacaps, getcacert, enroll)."""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scepd.cli.common import (
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    actions,
    command,
    err,
    say,
    usage,
)
from scepd.protocol.fingerprints import certificate_sha256_display


class UsageError(ValueError):
    """Options that do not go together, or a value that cannot be used; the message says which."""


def _client(args):
    from scepd.client import ScepClient

    if args.ca_bundle and not args.ca_bundle.is_file():
        raise OSError(f"--ca-bundle {args.ca_bundle}: no such file")
    return ScepClient(args.url, timeout=args.timeout, ca_bundle=args.ca_bundle)


def cmd_client_getcacaps(args) -> int:
    with _client(args) as client:
        for cap in sorted(client.get_ca_caps()):
            say(cap)  # the server's words
    return EXIT_OK


def cmd_client_getcacert(args) -> int:
    with _client(args) as client:
        certs = client.get_ca_certs()
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs.all)
    if args.out:
        args.out.write_bytes(pem)
        err(f"wrote {len(certs.all)} certificate(s) to {args.out}")
    else:
        sys.stdout.write(pem.decode())
    err(f"CA SHA-256: {certificate_sha256_display(certs.ca)}")
    return EXIT_OK


def _renewal_signer(args):
    """(the current certificate, its key) when renewing, else None."""
    from scepd.ca.keys import load_key

    if not (args.renew_cert or args.renew_key):
        return None
    if not (args.renew_cert and args.renew_key):
        raise UsageError("--renew-cert and --renew-key go together")
    return x509.load_pem_x509_certificate(args.renew_cert.read_bytes()), load_key(args.renew_key)


def _request(args, signer) -> dict:
    """What the CSR asks for: subject and SANs (a renewal keeps the old ones unless told
    otherwise: asking for more would need a challenge), key usage."""
    from scepd.client import parse_san
    from scepd.protocol.names import key_usage_extension

    try:
        if args.subject is not None:
            subject = x509.Name.from_rfc4514_string(args.subject)
        elif signer is not None:
            subject = signer[0].subject
        else:
            raise ValueError("--subject is required (except when renewing)")
        sans = [parse_san(s) for s in args.san]
        if not sans and signer is not None and args.subject is None:
            sans = _sans_of(signer[0])
        key_usage = key_usage_extension(set(args.key_usage.split(","))) if args.key_usage else None
    except ValueError as exc:
        raise UsageError(f"error: {exc}") from None
    return {"subject": subject, "sans": sans, "key_usage": key_usage}


def _sans_of(certificate: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _key(args) -> tuple[object, Path]:
    """The key to enroll (--key-in, else a new one) and where a new one is to be written."""
    from scepd.ca.keys import KeySpecError, generate_key, load_key

    if args.key_in:
        return load_key(args.key_in), args.key_in
    try:
        key = generate_key(args.key)
    except KeySpecError as exc:
        raise UsageError(f"--key {exc}") from None
    key_out = args.key_out or args.cert_out.with_suffix(".key")
    if key_out.exists():
        raise UsageError(f"{key_out} exists; pass --key-in {key_out} to reuse it or choose another --key-out")
    return key, key_out


def _written(args, result, key, key_out: Path) -> int:
    """Tell what the server answered; write the key and certificate it issued."""
    from scepd.ca.keys import save_key
    from scepd.protocol import PkiStatus

    if result.status is PkiStatus.SUCCESS:
        if not args.key_in:
            save_key(key, key_out)
        args.cert_out.write_bytes(result.certificate.public_bytes(serialization.Encoding.PEM))
        err(f"issued {result.certificate.subject.rfc4514_string()} serial {result.certificate.serial_number:x}")
        err(f"wrote {args.cert_out}" + ("" if args.key_in else f" and {key_out}"))
        return EXIT_OK
    if result.status is PkiStatus.PENDING:
        err(f"pending: transaction {result.transaction_id} awaits approval (poll with --poll-interval)")
        return EXIT_PENDING
    err(f"refused: {result.fail_info.rfc_name if result.fail_info else 'failure'}: {result.fail_info_text or ''}")
    return EXIT_REFUSED


def cmd_client_enroll(args) -> int:
    try:
        signer = _renewal_signer(args)
        request = _request(args, signer)
        key, key_out = _key(args)
    except UsageError as exc:
        return usage(str(exc))
    with _client(args) as client:
        result = client.enroll(
            key,
            request["subject"],
            sans=request["sans"],
            challenge=args.challenge,
            cipher=args.cipher,
            digest=args.digest,
            use_get=args.get,
            signer=signer,
            renewal=signer is not None and not args.pkcsreq,
            key_usage=request["key_usage"],
            poll_interval=args.poll_interval,
            max_poll_time=args.max_poll_time,
        )
    return _written(args, result, key, key_out)


def _add_enroll_options(p) -> None:
    p.add_argument("--subject", help="RFC 4514 subject, e.g. 'CN=device1,O=Example' (renewal: the old one)")
    p.add_argument("--san", action="append", default=[], help="dns:NAME, ip:ADDR, email:ADDR, uri:URI or upn:NAME (repeatable)")
    p.add_argument("--challenge", help="challenge password")
    p.add_argument("--key", default="rsa:2048", help="new key: rsa:BITS or ec:p256|p384 (default: %(default)s)")
    p.add_argument("--key-in", type=Path, help="use this existing PEM key instead of generating one")
    p.add_argument("--cipher", default="aes", choices=["aes", "aes128", "aes192", "aes256", "aes-gcm", "des3", "des"])
    p.add_argument("--digest", default="sha256", choices=["sha256", "sha1", "sha512", "sha384"])
    p.add_argument("--get", action="store_true", help="send PKIOperation by GET even if POST is offered")
    p.add_argument("--cert-out", type=Path, default=Path("cert.pem"), help="where to write the certificate (default: %(default)s)")
    p.add_argument("--key-out", type=Path, help="where to write a generated key (default: beside --cert-out, .key)")
    p.add_argument("--key-usage", help="key usage to request, e.g. digitalSignature (selects the NDES template)")
    p.add_argument("--renew-cert", type=Path, help="renew: the current certificate (signs the request)")
    p.add_argument("--renew-key", type=Path, help="renew: the current certificate's key")
    p.add_argument("--pkcsreq", action="store_true", help="renew with a PKCSReq (as Apple and sscep do), not a RenewalReq")
    p.add_argument("--poll-interval", type=float, default=0, help="seconds between CertPolls while PENDING (0: do not poll)")
    p.add_argument("--max-poll-time", type=float, default=0, help="give up polling after this many seconds (0: never)")


def add_parsers(sub) -> None:
    group = actions(sub, "client", "the SCEP client")
    parsers = {}
    for name, func, text in (
        ("getcacaps", cmd_client_getcacaps, "print the server's capabilities"),
        ("getcacert", cmd_client_getcacert, "fetch the CA (and RA) certificates as PEM"),
        ("enroll", cmd_client_enroll, "enroll a key (PKCSReq) and write key and certificate"),
    ):
        parsers[name] = p = command(group, name, func, text, instance=False)
        p.add_argument("url", help="SCEP URL, e.g. http://127.0.0.1:8080/scep or https://scep.example.com/scep")
        p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")
        p.add_argument("--ca-bundle", "--cacert", type=Path,
                       help="https: trust the server certificate when it chains to these PEM certificates "
                            "(e.g. the CA's ca.pem) instead of the system's")
    parsers["getcacert"].add_argument("--out", type=Path, help="write PEM here instead of stdout")
    _add_enroll_options(parsers["enroll"])
