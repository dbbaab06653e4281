"""The command line: parses arguments, calls the layers, prints.

Values meant for scripts go to stdout alone (an OTP, a fingerprint, --json output);
everything addressed to a person goes to stderr. Text for a person passes through `shown`,
since much of it comes from peers (transaction IDs, subjects, failInfoText, log entries).

Exit codes: 0 success; 1 the server refused (FAILURE) or a check warned; 2 bad usage,
configuration or instance (the message names the fix); 3 the request is pending;
4 the server could not be reached or answered something unreadable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_PENDING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


# What a terminal acts on instead of showing: C0 and C1 controls and DEL (Cc); format characters
# (Cf) such as the bidi overrides U+202A-U+202E and U+2066-U+2069, which reorder the rest of the
# line, and zero-width ones, which make two names look alike; the line and paragraph separators
# (Zl, Zp); lone surrogates (Cs), which cannot even be encoded. An ESC in a transactionID
# otherwise retitles the terminal, and a CR or LF forges a log line.
_UNSHOWN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(value) -> str:
    """`value` as text for a person's terminal: every character it would act on written as a
    visible escape (ESC as \\x1b, U+202E as \\u202e), everything else as it is."""
    text = str(value)
    if text.isprintable():  # the common case, decided in C
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNSHOWN else c for c in text)


def _err(*parts) -> None:
    print(*(shown(p) for p in parts), file=sys.stderr)


def _say(*parts) -> None:
    """A line for a person on stdout (tables, logs): shown, like _err."""
    print(*(shown(p) for p in parts))


def _dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="instance directory (default: $SCEPD_DIR, else ./instance)",
    )


def _instance_dir(args) -> Path:
    from scepd.registry.instance import default_directory

    return args.dir or default_directory()


def _open(args):
    from scepd.registry.instance import Instance

    if getattr(args, "db", None):
        # As the SCEPD_DATABASE_URL override, which the worker processes read too.
        os.environ["SCEPD_DATABASE_URL"] = args.db
    return Instance.open(_instance_dir(args))


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def scep_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/scep"


# --- commands ---------------------------------------------------------------------------


def cmd_init(args) -> int:
    from scepd.ca.keys import KeySpecError
    from scepd.registry.instance import create_instance, load_key_material

    directory = _instance_dir(args)
    passphrase = os.environ.get("SCEPD_KEY_PASSPHRASE") if args.encrypt_keys else None
    if args.encrypt_keys and not passphrase:
        _err("--encrypt-keys needs the passphrase in SCEPD_KEY_PASSPHRASE")
        return EXIT_USAGE
    try:
        instance = create_instance(
            directory,
            ca_subject=args.ca_subject,
            key_spec=args.key,
            passphrase=passphrase.encode() if passphrase else None,
            static_challenge=args.challenge,
        )
    except KeySpecError as exc:
        _err(f"--key {exc}")
        return EXIT_USAGE
    material = load_key_material(instance)
    _err(f"created instance in {directory}")
    return _print_info(instance, material, args.json)


def _print_info(instance, material, as_json: bool, url: str | None = None) -> int:
    info = {
        "directory": str(instance.directory),
        "url": url or scep_url(instance.config.server.host, instance.config.server.port),
        "ca_subject": material.ca.certificate.subject.rfc4514_string(),
        "ca_sha256_fingerprint": fingerprint(material.ca.certificate),
        "ra_subject": material.ra.certificate.subject.rfc4514_string(),
        "challenge": instance.config.challenge.static or None,
        "one_time_passwords": instance.config.challenge.one_time_passwords,
    }
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        _err(f"  SCEP URL:        {info['url']}")
        _err(f"  CA:              {info['ca_subject']}")
        _err(f"  CA SHA-256:      {info['ca_sha256_fingerprint']}")
        _err(f"  RA:              {info['ra_subject']}")
        _err(f"  challenge:       {info['challenge'] or '(none: use scepd otp new)'}")
    return EXIT_OK


def cmd_info(args) -> int:
    from scepd.registry.instance import load_key_material

    instance = _open(args)
    return _print_info(instance, load_key_material(instance), args.json)


def cmd_serve(args) -> int:
    from scepd.enrollment import build_validators
    from scepd.logs import configure
    from scepd.registry.checks import FAIL
    from scepd.registry.doctor import startup_checks
    from scepd.registry.instance import load_key_material
    from scepd.server.run import serve

    instance = _open(args)
    material = load_key_material(instance)
    store = instance.open_store()
    results = startup_checks(instance, material, store, build_validators)
    store.dispose()
    failures = [r for r in results if r.status == FAIL]
    for r in results:
        if r.status != "PASS":
            _err(f"{r.status} {r.name}: {r.reason}" + (f" Fix: {r.fix}" if r.fix else ""))
    if failures:
        _err("not serving: fix the FAIL lines above")
        return EXIT_USAGE
    host = args.host or instance.config.server.host
    port = args.port if args.port is not None else instance.config.server.port
    workers = args.workers or instance.config.server.workers
    _err(f"serving SCEP on {scep_url(host, port)}")
    _print_info(instance, material, False, scep_url(host, port))
    os.environ["SCEPD_DIR"] = str(instance.directory.resolve())
    # The workers read the configuration themselves: hand them the address actually served
    # (it makes the CRL distribution point of issued certificates when public_url is empty).
    os.environ["SCEPD_SERVER_HOST"], os.environ["SCEPD_SERVER_PORT"] = host, str(port)
    log_file = instance.path(instance.config.logging.file) if instance.config.logging.file else None
    configure(log_file)
    serve(host, port, workers, instance.config.server.max_request_bytes)
    return EXIT_OK


def cmd_db_upgrade(args) -> int:
    instance = _open(args)
    store = instance.open_store()
    before, head = store.schema_revisions()
    store.upgrade()
    _err(f"database at revision {head}" + ("" if before == head else f" (was {before or 'empty'})"))
    store.dispose()
    return EXIT_OK


def cmd_otp_new(args) -> int:
    from scepd.challenge import new_one_time_password
    from scepd.registry.config import ConfigError, parse_duration

    instance = _open(args)
    try:
        validity = parse_duration(args.validity or instance.config.challenge.otp_validity)
    except ConfigError as exc:
        _err(f"--validity: {exc}")
        return EXIT_USAGE
    if not instance.config.challenge.one_time_passwords:
        _err("one-time passwords are disabled: set [challenge] one_time_passwords = true in scepd.toml")
        return EXIT_USAGE
    store = instance.open_store()
    password, expires = new_one_time_password(store, validity)
    store.dispose()
    print(password)
    _err(f"valid once, until {expires:%Y-%m-%d %H:%M:%S}Z")
    return EXIT_OK


def _client(args):
    from scepd.client import ScepClient

    return ScepClient(args.url, timeout=args.timeout)


def cmd_client_getcacaps(args) -> int:
    with _client(args) as client:
        for cap in sorted(client.get_ca_caps()):
            _say(cap)  # the server's words
    return EXIT_OK


def cmd_client_getcacert(args) -> int:
    with _client(args) as client:
        certs = client.get_ca_certs()
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs.all)
    if args.out:
        args.out.write_bytes(pem)
        _err(f"wrote {len(certs.all)} certificate(s) to {args.out}")
    else:
        sys.stdout.write(pem.decode())
    _err(f"CA SHA-256: {fingerprint(certs.ca)}")
    return EXIT_OK


def cmd_client_enroll(args) -> int:
    from scepd.ca.keys import KeySpecError, generate_key, load_key, save_key
    from scepd.ca.templates import key_usage_extension
    from scepd.client import parse_san
    from scepd.protocol import PkiStatus

    signer = None
    if args.renew_cert or args.renew_key:
        if not (args.renew_cert and args.renew_key):
            _err("--renew-cert and --renew-key go together")
            return EXIT_USAGE
        old = x509.load_pem_x509_certificate(args.renew_cert.read_bytes())
        signer = (old, load_key(args.renew_key))
    try:
        if args.subject is not None:
            subject = x509.Name.from_rfc4514_string(args.subject)
        elif signer is not None:
            subject = signer[0].subject  # a renewal keeps the subject
        else:
            raise ValueError("--subject is required (except when renewing)")
        sans = [parse_san(s) for s in args.san]
        key_usage = key_usage_extension(set(args.key_usage.split(","))) if args.key_usage else None
    except ValueError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    if args.key_in:
        key = load_key(args.key_in)
    else:
        try:
            key = generate_key(args.key)
        except KeySpecError as exc:
            _err(f"--key {exc}")
            return EXIT_USAGE
    key_out = args.key_out or args.cert_out.with_suffix(".key")
    if not args.key_in and key_out.exists():
        _err(f"{key_out} exists; pass --key-in {key_out} to reuse it or choose another --key-out")
        return EXIT_USAGE
    with _client(args) as client:
        result = client.enroll(
            key,
            subject,
            sans=sans,
            challenge=args.challenge,
            cipher=args.cipher,
            digest=args.digest,
            use_get=args.get,
            signer=signer,
            renewal=signer is not None and not args.pkcsreq,
            key_usage=key_usage,
            poll_interval=args.poll_interval,
            max_poll_time=args.max_poll_time,
        )
    if result.status is PkiStatus.SUCCESS:
        if not args.key_in:
            save_key(key, key_out)
        args.cert_out.write_bytes(result.certificate.public_bytes(serialization.Encoding.PEM))
        _err(f"issued {result.certificate.subject.rfc4514_string()} serial {result.certificate.serial_number:x}")
        _err(f"wrote {args.cert_out}" + ("" if args.key_in else f" and {key_out}"))
        return EXIT_OK
    if result.status is PkiStatus.PENDING:
        _err(f"pending: transaction {result.transaction_id} awaits approval (poll with --poll-interval)")
        return EXIT_PENDING
    _err(f"refused: {result.fail_info.rfc_name if result.fail_info else 'failure'}: {result.fail_info_text or ''}")
    return EXIT_REFUSED


# --- administration -------------------------------------------------------------------------


def _service(args):
    """The enrollment service of an instance, for administrative commands."""
    from scepd.enrollment import EnrollmentService
    from scepd.registry.instance import load_key_material

    instance = _open(args)
    store = instance.open_store()
    return instance, EnrollmentService.from_instance(instance, load_key_material(instance), store)


def _emit(rows: list[dict], as_json: bool, columns: list[str]) -> None:
    if as_json:
        # json.dumps escapes every non-ASCII character (ensure_ascii), C1 and bidi included.
        print(json.dumps(rows, indent=2, default=str))
        return
    cells = [{c: shown(row.get(c) or "") for c in columns} for row in rows]  # widths of what is printed
    widths = {c: max([len(c)] + [len(r[c]) for r in cells]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in cells:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))


def cmd_templates_list(args) -> int:
    instance = _open(args)
    mapping = instance.config.template_mapping
    rows = []
    for name, t in sorted(instance.config.templates.items()):
        used_for = [k for k in ("SignatureTemplate", "EncryptionTemplate", "GeneralPurposeTemplate") if getattr(mapping, k) == name]
        rows.append({"name": name, "approval": t.approval, "validity_days": t.validity_days,
                     "extended_key_usage": ",".join(t.extended_key_usage), "mapped_as": ",".join(used_for)})
    _emit(rows, args.json, ["name", "approval", "validity_days", "extended_key_usage", "mapped_as"])
    return EXIT_OK


def cmd_templates_show(args) -> int:
    import dataclasses

    instance = _open(args)
    template = instance.config.templates.get(args.name)
    if template is None:
        _err(f"no template {args.name!r}; known: {', '.join(sorted(instance.config.templates))}")
        return EXIT_USAGE
    data = dataclasses.asdict(template)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            _say(f"{key:22} {', '.join(value) if isinstance(value, (tuple, list)) else value}")
    return EXIT_OK


def cmd_templates_reset_mapping(args) -> int:
    from scepd.registry.keyops import reset_template_mapping

    for key, name in reset_template_mapping(_open(args)).items():
        _err(f"[template_mapping] {key} = {name}")
    return EXIT_OK


def _transaction_row(r) -> dict:
    return {"transaction_id": r.transaction_id, "status": r.status, "subject": r.subject, "template": r.template,
            "type": r.message_type, "renewal_of": r.renewal_of, "client": r.client, "serial": r.certificate_serial,
            "reason": r.reason, "created": f"{r.created_at:%Y-%m-%d %H:%M:%S}" if r.created_at else None}


def cmd_requests_list(args) -> int:
    instance = _open(args)
    store = instance.open_store()
    rows = [_transaction_row(r) for r in store.list_transactions(args.status, args.limit)]
    _emit(rows, args.json, ["transaction_id", "status", "subject", "template", "created"])
    return EXIT_OK


def cmd_requests_show(args) -> int:
    instance = _open(args)
    record = instance.open_store().find_transaction(args.id)
    if record is None:
        _err(f"no request with transaction ID {args.id}")
        return EXIT_USAGE
    print(json.dumps(_transaction_row(record), indent=2))
    return EXIT_OK


def cmd_requests_decide(args) -> int:
    _, service = _service(args)
    try:
        if args.requests_command == "approve":
            cert = service.approve(args.id)
            _err(f"issued {cert.subject.rfc4514_string()} serial {cert.serial_number:x}; the device collects it by polling")
        else:
            service.deny(args.id, args.reason)
            _err(f"denied {args.id}: {args.reason}")
    except (KeyError, ValueError) as exc:
        _err(f"error: {exc.args[0]}")
        return EXIT_USAGE
    return EXIT_OK


def _certificate_row(r) -> dict:
    return {"serial": r.serial, "status": r.status, "subject": r.subject, "template": r.template,
            "not_after": f"{r.not_after:%Y-%m-%d}", "revoked_at": r.revoked_at, "reason": r.revocation_reason,
            "transaction_id": r.transaction_id, "renewal_of": r.renewal_of}


def cmd_certs_list(args) -> int:
    store = _open(args).open_store()
    rows = [_certificate_row(r) for r in store.list_certificates(args.status, args.limit)]
    _emit(rows, args.json, ["serial", "status", "subject", "template", "not_after"])
    return EXIT_OK


def cmd_certs_show(args) -> int:
    record = _open(args).open_store().find_certificate(args.serial)
    if record is None:
        _err(f"no certificate with serial {args.serial}")
        return EXIT_USAGE
    if args.pem:
        cert = x509.load_der_x509_certificate(record.der)
        sys.stdout.write(cert.public_bytes(serialization.Encoding.PEM).decode())
    else:
        print(json.dumps(_certificate_row(record), indent=2, default=str))
    return EXIT_OK


def cmd_certs_revoke(args) -> int:
    _, service = _service(args)
    try:
        revoked = service.revoke(args.serial, args.reason, with_renewals=args.with_renewals)
    except (KeyError, ValueError) as exc:
        _err(f"error: {exc.args[0]}")
        return EXIT_USAGE
    if args.json:
        print(json.dumps([_certificate_row(r) for r in revoked], indent=2, default=str))
    else:
        for r in revoked:
            what = "" if r.serial == args.serial.lower() else f", renewal of {r.renewal_of}"
            _err(f"revoked {r.serial} ({r.revocation_reason}{what}) {r.subject}")
    crls = len({r.issuer_key_id for r in revoked})
    _err(f"{len(revoked)} certificate(s) revoked; {'CRL' if crls == 1 else f'{crls} CRLs'} re-signed")
    return EXIT_OK


def cmd_ca_rollover(args) -> int:
    from scepd.registry.instance import load_key_material
    from scepd.registry.keyops import rollover

    instance = _open(args)
    path = rollover(instance, load_key_material(instance), args.key)
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    _err(f"next CA written to {path}; GetNextCACert offers it. Activate with: scepd ca activate-next")
    print(fingerprint(cert))
    return EXIT_OK


def cmd_ca_activate_next(args) -> int:
    from scepd.registry.keyops import activate_next

    activate_next(_open(args))
    _err("the next CA issues from now on; the previous one stays in GetCACert and keeps its CRL")
    return EXIT_OK


def cmd_ra_renew(args) -> int:
    from scepd.registry.instance import load_key_material
    from scepd.registry.keyops import renew_ra

    instance = _open(args)
    path = renew_ra(instance, load_key_material(instance), args.validity_days)
    _err(f"new RA certificate {path}; running servers switch within seconds, the old RA still decrypts")
    return EXIT_OK


# --- the registration point ---------------------------------------------------------------


def _expected_request(args):
    from scepd.challenge.mdm import ExpectedRequest
    from scepd.client import parse_san

    for san in args.san:
        parse_san(san)  # refuse a malformed SAN now, not at the device
    if args.subject:
        x509.Name.from_rfc4514_string(args.subject)
    return ExpectedRequest(
        subject=args.subject,
        sans=tuple(args.san),
        key_usage=tuple(filter(None, (args.key_usage or "").split(","))),
        eku=tuple(filter(None, (args.eku or "").split(","))),
        key_type=args.key_type,
        min_key_size=args.min_key_size,
        template=args.template,
        device_id=args.device_id,
        user_id=args.user_id,
    )


def cmd_challenge_issue(args) -> int:
    import datetime as dt

    from scepd.challenge.mdm import issue_local_challenge
    from scepd.registry.config import ConfigError, parse_duration

    instance = _open(args)
    try:
        expected = _expected_request(args)
        lifetime = parse_duration(args.validity) if args.validity else None
        if args.template and args.template not in instance.config.templates:
            raise ValueError(f"no template {args.template!r}")
        challenge, claims = issue_local_challenge(instance, expected, lifetime)
    except (ValueError, ConfigError) as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    if args.json:
        print(json.dumps({
            "challenge": challenge,
            "scep_url": f"{instance.config.server.base_url}/scep",
            "expires_at": dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc).isoformat(),
            "jti": claims["jti"],
        }, indent=2))
    else:
        print(challenge)
        _err(f"valid once, until {dt.datetime.fromtimestamp(claims['exp'], dt.timezone.utc):%Y-%m-%d %H:%M:%S}Z")
    return EXIT_OK


def cmd_registry_show(args) -> int:
    import dataclasses

    from scepd.challenge.mdm import thumbprint
    from scepd.registry.rp import load_rp_material

    instance = _open(args)
    rp = instance.config.registration_point
    material = load_rp_material(instance)

    def describe(pair_or_cert):
        cert = getattr(pair_or_cert, "certificate", pair_or_cert)
        if cert is None:
            return None
        return {"subject": cert.subject.rfc4514_string(), "thumbprint_sha256": thumbprint(cert),
                "not_after": f"{cert.not_valid_after_utc:%Y-%m-%d}"}

    trusted = {thumbprint(c): c for c in material.trusted}
    data = {
        "registration_point": {k: v for k, v in dataclasses.asdict(rp).items() if k != "api_tokens"},
        "api_tokens": len(rp.api_tokens),
        "encryption": describe(material.encryption) or "MISSING",
        "signing": describe(material.signing) or "MISSING",
        "trusted_signers": [describe(c) for c in trusted.values()],
        "template_mapping": dataclasses.asdict(instance.config.template_mapping),
        "challenge": {k: v for k, v in dataclasses.asdict(instance.config.challenge).items()
                      if k not in ("static", "client_secret", "remote_token")},
    }
    print(json.dumps(data, indent=2, default=str))
    return EXIT_OK


_SETTABLE = {
    "challenge_lifetime": ("registration_point", "challenge_lifetime"),
    "clock_skew": ("registration_point", "clock_skew"),
    "audience": ("registration_point", "audience"),
    "issuer": ("registration_point", "issuer"),
    "SignatureTemplate": ("template_mapping", "SignatureTemplate"),
    "EncryptionTemplate": ("template_mapping", "EncryptionTemplate"),
    "GeneralPurposeTemplate": ("template_mapping", "GeneralPurposeTemplate"),
}


def cmd_registry_set(args) -> int:
    from scepd.registry.config import CONFIG_FILE, ConfigError, update_config_file

    instance = _open(args)
    if args.key not in _SETTABLE:
        _err(f"unknown entry {args.key!r}; settable: {', '.join(_SETTABLE)}")
        return EXIT_USAGE
    section, key = _SETTABLE[args.key]
    if section == "template_mapping" and args.value not in instance.config.templates:
        _err(f"no template {args.value!r}; known: {', '.join(sorted(instance.config.templates))}")
        return EXIT_USAGE
    try:
        update_config_file(instance.path(CONFIG_FILE), {section: {key: args.value}})
    except ConfigError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    _err(f"[{section}] {key} = {args.value}")
    return EXIT_OK


def cmd_registry_trust(args) -> int:
    from scepd.challenge.mdm import thumbprint
    from scepd.registry.config import CONFIG_FILE, update_config_file

    instance = _open(args)
    rp = instance.config.registration_point
    if args.trust_command == "add":
        try:
            cert = x509.load_pem_x509_certificate(args.certificate.read_bytes())
        except (OSError, ValueError) as exc:
            _err(f"error: {args.certificate} is not a PEM certificate: {exc}")
            return EXIT_USAGE
        name = f"rp/trusted/{thumbprint(cert)[:16]}.pem"
        path = instance.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if name not in rp.trusted_signers:
            update_config_file(instance.path(CONFIG_FILE), {"registration_point": {"trusted_signers": (*rp.trusted_signers, name)}})
        _err(f"trusted {cert.subject.rfc4514_string()} ({thumbprint(cert)}) as {name}")
        return EXIT_OK
    keep = []
    for name in rp.trusted_signers:
        path = instance.path(name)
        match = args.certificate in (name, path.name)
        if not match and path.exists():
            try:
                match = thumbprint(x509.load_pem_x509_certificate(path.read_bytes())) == args.certificate
            except ValueError:
                pass
        if not match:
            keep.append(name)
    if len(keep) == len(rp.trusted_signers):
        _err(f"no trusted signer {args.certificate!r}; trusted: {', '.join(rp.trusted_signers) or 'none'}")
        return EXIT_USAGE
    update_config_file(instance.path(CONFIG_FILE), {"registration_point": {"trusted_signers": tuple(keep)}})
    _err(f"no longer trusted: {args.certificate}")
    return EXIT_OK


def cmd_registry_token_new(args) -> int:
    from scepd.registry.rp import TOKEN_ID_DIGITS, TOKENS_ENV, new_api_token, token_digest

    token = new_api_token(_open(args))
    print(token)
    _err("keep it secret: only its SHA-256 is stored; use it as 'Authorization: Bearer <token>'")
    _err(f"its ID is {token_digest(token)[:TOKEN_ID_DIGITS]} (scepd registry token list, scepd registry token revoke ID)")
    if TOKENS_ENV in os.environ:
        _err(f"warning: {TOKENS_ENV} replaces the tokens of scepd.toml: add {token_digest(token)} to it too")
    return EXIT_OK


def cmd_registry_token_list(args) -> int:
    from scepd.registry.rp import list_api_tokens

    tokens = list_api_tokens(_open(args))
    if args.json:
        print(json.dumps([{"id": t.id, "sha256": t.digest, "source": t.source} for t in tokens], indent=2))
    elif not tokens:
        _err("no API tokens: scepd registry token new makes one")
    else:
        _emit([{"id": t.id, "sha256": t.digest, "source": t.source} for t in tokens], False, ["id", "sha256", "source"])
    return EXIT_OK


def cmd_registry_token_revoke(args) -> int:
    from scepd.registry.rp import TokenError, revoke_api_token

    try:
        token = revoke_api_token(_open(args), args.id)
    except TokenError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    _err(f"revoked API token {token.id}; running servers refuse it within seconds (they reload scepd.toml)")
    return EXIT_OK


def cmd_doctor(args) -> int:
    from scepd.enrollment import build_validators
    from scepd.registry.doctor import exit_code, run_doctor

    results = run_doctor(_open(args), build_validators, fix=args.fix)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            _say(f"{r.status:4}  {r.name}: {r.reason}")
            if r.fix and r.status != "PASS":
                _say(f"      fix: {r.fix}")
    return exit_code(results)


def cmd_logs(args) -> int:
    import datetime as dt

    from scepd.registry.config import ConfigError, parse_duration

    instance = _open(args)
    if not instance.config.logging.file:
        _err("logging to a file is off ([logging] file is empty)")
        return EXIT_USAGE
    path = instance.path(instance.config.logging.file)
    try:
        since = dt.datetime.now(dt.timezone.utc) - parse_duration(args.since) if args.since else None
    except ConfigError as exc:
        _err(f"--since: {exc}")
        return EXIT_USAGE
    if not path.exists():
        return EXIT_OK
    # JSON lines end at LF only: splitlines() would also cut at U+2028, U+0085 and the like.
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        ts = str(entry.get("ts", ""))
        if args.transaction and entry.get("transaction_id") != args.transaction:
            continue
        if args.errors and not (entry.get("code") or entry.get("level") in ("warning", "error")):
            continue
        try:
            if since and dt.datetime.fromisoformat(ts) < since:
                continue
        except (TypeError, ValueError):  # no time, or a naive one: not within --since
            continue
        if args.json:
            print(json.dumps(entry))
            continue
        what = entry.get("operation") or entry.get("phase") or entry.get("msg")
        parts = [ts[:19].replace("T", " "), f"{str(entry.get('level', '')):7}", str(what)]
        for key in ("transaction_id", "status", "result", "code", "reason", "serial", "remedy"):
            if entry.get(key):
                parts.append(f"{key}={entry[key]}")
        _say("  ".join(parts))
    return EXIT_OK


def cmd_profile_apple(args) -> int:
    from scepd.challenge.mdm import issue_local_challenge
    from scepd.profiles import ScepProfile
    from scepd.registry.instance import load_key_material

    instance = _open(args)
    try:
        subject = x509.Name.from_rfc4514_string(args.subject)
        key_usage = tuple(filter(None, args.key_usage.split(",")))
        challenge = args.challenge
        if args.mdm_challenge:
            args.eku, args.key_type, args.min_key_size, args.template, args.device_id, args.user_id = (
                None, "rsa", args.key_size, None, None, None)
            challenge, _ = issue_local_challenge(instance, _expected_request(args))
        elif challenge is None:
            challenge = instance.config.challenge.static or None
        profile = ScepProfile(
            url=args.url or f"{instance.config.server.base_url}/scep",
            ca_certificate=load_key_material(instance).ca.certificate,
            subject=subject,
            challenge=challenge,
            sans=tuple(args.san),
            key_size=args.key_size,
            key_usage=key_usage,
            name=args.name,
        )
        data = json.dumps(profile.as_json(), indent=2).encode() if args.json else profile.mobileconfig()
    except ValueError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    if args.out:
        args.out.write_bytes(data)
        _err(f"wrote {args.out}")
    else:
        sys.stdout.write(data.decode())
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from scepd.ca.crl import REASONS as REVOCATION_REASONS

    parser = argparse.ArgumentParser(
        prog="scepd",
        description="A self-hosted SCEP server, CA and client.",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create an instance: root CA, RA, scepd.toml, database")
    _dir_arg(p)
    p.add_argument("--ca-subject", default="CN=scepd Root CA", help="RFC 4514 subject of the CA (default: %(default)s)")
    p.add_argument("--key", default="rsa:3072", help="CA key: rsa:BITS or ec:p256|p384 (default: %(default)s)")
    p.add_argument("--challenge", help="static challenge (default: a random one)")
    p.add_argument("--encrypt-keys", action="store_true", help="encrypt key files with $SCEPD_KEY_PASSPHRASE")
    p.add_argument("--json", action="store_true", help="print the instance summary as JSON on stdout")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("info", help="show the SCEP URL, CA fingerprint and challenge")
    _dir_arg(p)
    p.add_argument("--json", action="store_true", help="as JSON on stdout")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", help="check the instance, then serve SCEP over HTTP")
    _dir_arg(p)
    p.add_argument("--db", help="database URL, e.g. postgresql+psycopg://scepd@db/scepd (default: [database] url)")
    p.add_argument("--host", help="address to bind (default: [server] host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: [server] port, 8080)")
    p.add_argument("--workers", type=int, help="worker processes sharing the socket (default: [server] workers)")
    p.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="the database").add_subparsers(dest="db_command", required=True, metavar="ACTION")
    p = db.add_parser("upgrade", help="apply the schema migrations (SQLite or PostgreSQL)")
    _dir_arg(p)
    p.add_argument("--db", help="database URL (default: [database] url)")
    p.set_defaults(func=cmd_db_upgrade)

    otp = sub.add_parser("otp", help="one-time challenge passwords").add_subparsers(dest="otp_command", required=True, metavar="ACTION")
    p = otp.add_parser("new", help="print a fresh single-use challenge password")
    _dir_arg(p)
    p.add_argument("--validity", help="lifetime such as 60m, 8h, 2d (default: [challenge] otp_validity)")
    p.set_defaults(func=cmd_otp_new)

    group = sub.add_parser("templates", help="certificate templates and the NDES mapping").add_subparsers(
        dest="templates_command", required=True, metavar="ACTION")
    p = group.add_parser("list", help="templates, and which NDES mapping key uses each")
    _dir_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_templates_list)
    p = group.add_parser("show", help="every setting of one template")
    _dir_arg(p)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_templates_show)
    p = group.add_parser("reset-mapping", help="map all three NDES purposes to IPSECIntermediateOffline")
    _dir_arg(p)
    p.set_defaults(func=cmd_templates_reset_mapping)

    group = sub.add_parser("requests", help="enrollment requests (pending approval and past)").add_subparsers(
        dest="requests_command", required=True, metavar="ACTION")
    p = group.add_parser("list", help="requests, newest first")
    _dir_arg(p)
    p.add_argument("--status", choices=["pending", "issued", "denied"])
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_requests_list)
    p = group.add_parser("show", help="one request")
    _dir_arg(p)
    p.add_argument("id", help="transaction ID")
    p.set_defaults(func=cmd_requests_show)
    p = group.add_parser("approve", help="issue the certificate of a pending request")
    _dir_arg(p)
    p.add_argument("id", help="transaction ID")
    p.set_defaults(func=cmd_requests_decide)
    p = group.add_parser("deny", help="refuse a pending request; its next poll gets FAILURE with the reason")
    _dir_arg(p)
    p.add_argument("id", help="transaction ID")
    p.add_argument("--reason", default="denied by an administrator")
    p.set_defaults(func=cmd_requests_decide)

    group = sub.add_parser("certs", help="issued certificates and revocation").add_subparsers(
        dest="certs_command", required=True, metavar="ACTION")
    p = group.add_parser("list", help="certificates, newest first")
    _dir_arg(p)
    p.add_argument("--status", choices=["valid", "revoked"])
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_certs_list)
    p = group.add_parser("show", help="one certificate")
    _dir_arg(p)
    p.add_argument("serial", help="serial number in hex")
    p.add_argument("--pem", action="store_true", help="print the certificate as PEM")
    p.set_defaults(func=cmd_certs_show)
    p = group.add_parser("revoke", help="revoke a certificate and re-sign the CRL")
    _dir_arg(p)
    p.add_argument("serial", help="serial number in hex")
    p.add_argument("--reason", default="unspecified", choices=sorted(REVOCATION_REASONS))
    p.add_argument("--with-renewals", action="store_true",
                   help="also revoke every certificate renewed from it, and their renewals")
    p.add_argument("--json", action="store_true", help="what was revoked, as JSON on stdout")
    p.set_defaults(func=cmd_certs_revoke)

    group = sub.add_parser("ca", help="CA rollover").add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    p = group.add_parser("rollover", help="create the next CA (and RA); GetNextCACert offers it")
    _dir_arg(p)
    p.add_argument("--key", help="key of the next CA (default: same type and size as now)")
    p.set_defaults(func=cmd_ca_rollover)
    p = group.add_parser("activate-next", help="issue from the next CA; the current one stays trusted")
    _dir_arg(p)
    p.set_defaults(func=cmd_ca_activate_next)

    group = sub.add_parser("ra", help="the RA certificate").add_subparsers(dest="ra_command", required=True, metavar="ACTION")
    p = group.add_parser("renew", help="new RA key and certificate, picked up by running servers")
    _dir_arg(p)
    p.add_argument("--validity-days", type=int, default=730)
    p.set_defaults(func=cmd_ra_renew)

    p = sub.add_parser("doctor", help="check everything the instance needs; --fix mends what is safe")
    _dir_arg(p)
    p.add_argument("--fix", action="store_true", help="repair what is safe and say what was done")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("logs", help="the request and verification log, readable")
    _dir_arg(p)
    p.add_argument("--transaction", help="only this transaction ID")
    p.add_argument("--errors", action="store_true", help="only refusals and warnings")
    p.add_argument("--since", help="only the last 30m, 1h, 2d ...")
    p.add_argument("--json", action="store_true", help="the JSON lines as stored")
    p.set_defaults(func=cmd_logs)

    group = sub.add_parser("challenge", help="MDM challenges (the MDM side)").add_subparsers(
        dest="challenge_command", required=True, metavar="ACTION")
    p = group.add_parser("issue", help="a signed, encrypted challenge for one enrollment")
    _dir_arg(p)
    p.add_argument("--subject", help="the subject the CSR must ask for (RFC 4514)")
    p.add_argument("--san", action="append", default=[], help="dns:, ip:, email:, uri: or upn: SAN the CSR must carry (repeatable)")
    p.add_argument("--key-usage", help="e.g. digitalSignature,keyEncipherment")
    p.add_argument("--eku", help="extended key usages the CSR must request, e.g. clientAuth")
    p.add_argument("--key-type", choices=["rsa", "ec"])
    p.add_argument("--min-key-size", type=int)
    p.add_argument("--template", help="issue with this template instead of the NDES mapping's")
    p.add_argument("--device-id", help="the CSR must carry URI SAN IntuneDeviceId://ID")
    p.add_argument("--user-id")
    p.add_argument("--validity", help="lifetime, at most [registration_point] challenge_lifetime (60m)")
    p.add_argument("--json", action="store_true", help="challenge, SCEP URL and expiry as JSON")
    p.set_defaults(func=cmd_challenge_issue)

    group = sub.add_parser("profile", help="enrollment profiles for MDMs").add_subparsers(
        dest="profile_command", required=True, metavar="KIND")
    p = group.add_parser("apple", help="an Apple .mobileconfig SCEP payload (--json: the same for other MDMs)")
    _dir_arg(p)
    p.add_argument("--subject", required=True, help="RFC 4514 subject the device asks for")
    p.add_argument("--san", action="append", default=[], help="dns:, email:, uri: or upn: (repeatable)")
    p.add_argument("--challenge", help="challenge to embed (default: the static challenge)")
    p.add_argument("--mdm-challenge", action="store_true", help="embed a fresh MDM challenge bound to this subject and SANs")
    p.add_argument("--key-size", type=int, default=2048)
    p.add_argument("--key-usage", default="digitalSignature,keyEncipherment")
    p.add_argument("--name", default="scepd", help="the CA name the profile shows")
    p.add_argument("--url", help="SCEP URL (default: [server] public_url + /scep)")
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    p.add_argument("--json", action="store_true", help="the settings as JSON for Android and other MDMs")
    p.set_defaults(func=cmd_profile_apple)

    group = sub.add_parser("registry", help="the registration point's registry").add_subparsers(
        dest="registry_command", required=True, metavar="ACTION")
    p = group.add_parser("show", help="every entry, with certificate thumbprints and expiry (JSON)")
    _dir_arg(p)
    p.set_defaults(func=cmd_registry_show)
    p = group.add_parser("set", help=f"set an entry: {', '.join(_SETTABLE)}")
    _dir_arg(p)
    p.add_argument("key")
    p.add_argument("value")
    p.set_defaults(func=cmd_registry_set)
    trust = group.add_parser("trust", help="trusted MDM signing certificates").add_subparsers(
        dest="trust_command", required=True, metavar="ACTION")
    p = trust.add_parser("add", help="trust challenges signed by this certificate's key")
    _dir_arg(p)
    p.add_argument("certificate", type=Path, help="PEM certificate of the MDM's signing key")
    p.set_defaults(func=cmd_registry_trust)
    p = trust.add_parser("remove", help="stop trusting a signing certificate (file name or SHA-256 thumbprint)")
    _dir_arg(p)
    p.add_argument("certificate")
    p.set_defaults(func=cmd_registry_trust)
    token = group.add_parser("token", help="bearer tokens of the HTTP APIs").add_subparsers(
        dest="token_command", required=True, metavar="ACTION")
    p = token.add_parser("new", help="print a new token (only its hash is kept)")
    _dir_arg(p)
    p.set_defaults(func=cmd_registry_token_new)
    p = token.add_parser("list", help="the tokens by ID (the first 12 hex digits of their SHA-256)")
    _dir_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_registry_token_list)
    p = token.add_parser("revoke", help="stop accepting a token, by its ID or a prefix of it (4 digits at least)")
    _dir_arg(p)
    p.add_argument("id", help="token ID, as token list shows it")
    p.set_defaults(func=cmd_registry_token_revoke)

    client = sub.add_parser("client", help="the SCEP client").add_subparsers(dest="client_command", required=True, metavar="ACTION")
    for name, func, text in (
        ("getcacaps", cmd_client_getcacaps, "print the server's capabilities"),
        ("getcacert", cmd_client_getcacert, "fetch the CA (and RA) certificates as PEM"),
        ("enroll", cmd_client_enroll, "enroll a key (PKCSReq) and write key and certificate"),
    ):
        p = client.add_parser(name, help=text)
        p.add_argument("url", help="SCEP URL, e.g. http://127.0.0.1:8080/scep")
        p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")
        p.set_defaults(func=func)
        if name == "getcacert":
            p.add_argument("--out", type=Path, help="write PEM here instead of stdout")
        if name == "enroll":
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
    return parser


def main(argv: list[str] | None = None) -> int:
    from scepd.client import ScepClientError
    from scepd.protocol import ProtocolError
    from scepd.registry.instance import InstanceError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InstanceError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except (ScepClientError, ProtocolError) as exc:
        _err(f"error: {exc}")
        return EXIT_UNREACHABLE
    except OSError as exc:
        _err(f"error: {exc}")
        return EXIT_UNREACHABLE if "connect" in str(exc).lower() else EXIT_USAGE
    except Exception as exc:  # httpx transport errors and the like
        import httpx

        if isinstance(exc, httpx.HTTPError):
            _err(f"error: cannot reach the server: {exc}")
            return EXIT_UNREACHABLE
        raise


if __name__ == "__main__":
    sys.exit(main())
