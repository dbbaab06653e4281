"""scepd registry: the registration point's entries, trusted MDM signers and API tokens."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cryptography import x509

from scepd.cli.common import (
    EXIT_OK,
    actions,
    audited,
    command,
    emit,
    err,
    json_flag,
    open_instance,
    print_json,
    record_action,
    usage,
)
from scepd.protocol.fingerprints import jose_thumbprint


def _described(cert: x509.Certificate | None) -> dict | None:
    if cert is None:
        return None
    return {"subject": cert.subject.rfc4514_string(), "thumbprint_sha256": jose_thumbprint(cert),
            "not_after": f"{cert.not_valid_after_utc:%Y-%m-%d}"}


def cmd_registry_show(args) -> int:
    from scepd.registry.rp import load_rp_material

    instance = open_instance(args)
    rp = instance.config.registration_point
    material = load_rp_material(instance)
    trusted = {jose_thumbprint(c): c for c in material.trusted}  # once each
    print_json({
        "registration_point": {k: v for k, v in dataclasses.asdict(rp).items() if k != "api_tokens"},
        "api_tokens": len(rp.api_tokens),
        "encryption": _described(material.encryption and material.encryption.certificate) or "MISSING",
        "signing": _described(material.signing and material.signing.certificate) or "MISSING",
        "trusted_signers": [_described(c) for c in trusted.values()],
        "template_mapping": dataclasses.asdict(instance.config.template_mapping),
        "challenge": {k: v for k, v in dataclasses.asdict(instance.config.challenge).items()
                      if k not in ("static", "client_secret", "remote_token")},
    })
    return EXIT_OK


@audited("registry.set", lambda args: f"{args.key} = {args.value}")
def cmd_registry_set(args) -> int:
    from scepd.registry.config import ConfigError
    from scepd.registry.rp import set_entry

    try:
        section, key = set_entry(open_instance(args), args.key, args.value)
    except ConfigError as exc:
        return usage(f"error: {exc}")
    err(f"[{section}] {key} = {args.value}")
    return EXIT_OK


@audited("registry.trust_add", lambda args: str(args.certificate))
def cmd_registry_trust_add(args) -> int:
    from scepd.registry.rp import trust_add

    instance = open_instance(args)
    try:
        cert = x509.load_pem_x509_certificate(args.certificate.read_bytes())
    except (OSError, ValueError) as exc:
        return usage(f"error: {args.certificate} is not a PEM certificate: {exc}")
    signer = trust_add(instance, cert)
    err(f"trusted {cert.subject.rfc4514_string()} ({jose_thumbprint(cert)}) as {signer.name}")
    return EXIT_OK


@audited("registry.trust_remove", lambda args: str(args.certificate))
def cmd_registry_trust_remove(args) -> int:
    from scepd.registry.rp import TrustError, trust_remove

    try:
        trust_remove(open_instance(args), args.certificate)
    except TrustError as exc:
        return usage(f"error: {exc}")
    err(f"no longer trusted: {args.certificate}")
    return EXIT_OK


def cmd_registry_token_new(args) -> int:
    from scepd.registry.rp import (
        TOKEN_ID_DIGITS,
        TOKENS_ENV,
        new_api_token,
        token_digest,
    )

    token = new_api_token(open_instance(args))
    record_action(args, "api_token.new", token_digest(token)[:TOKEN_ID_DIGITS], None)
    print(token)
    err("keep it secret: only its SHA-256 is stored; use it as 'Authorization: Bearer <token>'")
    err(f"its ID is {token_digest(token)[:TOKEN_ID_DIGITS]} (scepd registry token list, scepd registry token revoke ID)")
    if TOKENS_ENV in os.environ:
        err(f"warning: {TOKENS_ENV} replaces the tokens of scepd.toml: add {token_digest(token)} to it too")
    return EXIT_OK


def cmd_registry_token_list(args) -> int:
    from scepd.registry.rp import list_api_tokens

    rows = [{"id": t.id, "sha256": t.digest, "source": t.source} for t in list_api_tokens(open_instance(args))]
    if not rows and not args.json:
        err("no API tokens: scepd registry token new makes one")
        return EXIT_OK
    return emit(rows, args.json, ["id", "sha256", "source"])


def cmd_registry_token_revoke(args) -> int:
    from scepd.registry.rp import TokenError, revoke_api_token

    try:
        token = revoke_api_token(open_instance(args), args.id)
    except TokenError as exc:
        record_action(args, "api_token.revoke", args.id, "TokenUnknown")
        return usage(f"error: {exc}")
    record_action(args, "api_token.revoke", token.id, None)
    err(f"revoked API token {token.id}; running servers refuse it within seconds (they reload scepd.toml)")
    return EXIT_OK


def _add_trust(group) -> None:
    trust = actions(group, "trust", "trusted MDM signing certificates")
    p = command(trust, "add", cmd_registry_trust_add, "trust challenges signed by this certificate's key")
    p.add_argument("certificate", type=Path, help="PEM certificate of the MDM's signing key")
    p = command(trust, "remove", cmd_registry_trust_remove,
                "stop trusting a signing certificate (file name or SHA-256 thumbprint)")
    p.add_argument("certificate")


def _add_token(group) -> None:
    token = actions(group, "token", "bearer tokens of the HTTP APIs")
    command(token, "new", cmd_registry_token_new, "print a new token (only its hash is kept)")
    json_flag(command(token, "list", cmd_registry_token_list, "the tokens by ID (the first 12 hex digits of their SHA-256)"))
    p = command(token, "revoke", cmd_registry_token_revoke,
                "stop accepting a token, by its ID or a prefix of it (4 digits at least)")
    p.add_argument("id", help="token ID, as token list shows it")


def add_parsers(sub) -> None:
    from scepd.registry.rp import SETTABLE

    group = actions(sub, "registry", "the registration point's registry")
    command(group, "show", cmd_registry_show, "every entry, with certificate thumbprints and expiry (JSON)")
    p = command(group, "set", cmd_registry_set, f"set an entry: {', '.join(SETTABLE)}")
    p.add_argument("key")
    p.add_argument("value")
    _add_trust(group)
    _add_token(group)
