"""scepd challenge and scepd profile: the MDM side of enrollment, a signed challenge bound to
one request, and the profile a device enrolls with."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

from cryptography import x509

from scepd.cli.common import (
    EXIT_OK,
    actions,
    command,
    err,
    json_flag,
    open_instance,
    print_json,
    record_action,
    single_use,
    usage,
)


def _listed(text: str | None) -> tuple[str, ...]:
    return tuple(filter(None, (text or "").split(",")))


def _challenge(instance, order: dict) -> dict:
    """A challenge issued the way the registration point's API issues one (the same order,
    the same checks): its answer, or ValueError with the refusal's reason."""
    from scepd.protocol.errors import Refusal
    from scepd.wiring import build_services

    store = instance.open_store()
    try:
        answer = build_services(instance, store).rp_api.issue_challenge(order)
    finally:
        store.dispose()
    if isinstance(answer, Refusal):
        raise ValueError(answer.reason)
    return answer


def _order(subject: str | None, sans: list[str], key_usage: str | None, eku: str | None = None, **rest) -> dict:
    """What the challenge binds the device's CSR to, in the API's shape."""
    order = {"subject": subject, "sans": list(sans), "key_usage": list(_listed(key_usage)), "eku": list(_listed(eku)), **rest}
    return {name: value for name, value in order.items() if value not in (None, [])}


def cmd_challenge_issue(args) -> int:
    instance = open_instance(args)
    order = _order(args.subject, args.san, args.key_usage, args.eku, key_type=args.key_type, min_key_size=args.min_key_size,
                   template=args.template, device_id=args.device_id, user_id=args.user_id, validity=args.validity)
    try:
        if args.template and args.template not in instance.config.templates:
            raise ValueError(f"no template {args.template!r}")
        answer = _challenge(instance, order)
    except ValueError as exc:
        return usage(f"error: {exc}")
    record_action(args, "challenge.issue", f"jti {answer['jti']} subject {args.subject or ''}", None)
    if not args.json:
        return single_use(answer["challenge"], dt.datetime.fromisoformat(answer["expires_at"]))
    print_json({key: answer[key] for key in ("challenge", "scep_url", "expires_at", "jti")})
    return EXIT_OK


def _profile(args, instance):
    """The profile the options describe; ValueError for a malformed subject or SAN."""
    from scepd.profiles import ScepProfile
    from scepd.registry.instance import load_key_material

    subject = x509.Name.from_rfc4514_string(args.subject)
    challenge = args.challenge
    if args.mdm_challenge:
        challenge = _challenge(instance, _order(args.subject, args.san, args.key_usage, key_type="rsa",
                                                min_key_size=args.key_size))["challenge"]
    elif challenge is None:
        challenge = instance.config.challenge.static or None
    return ScepProfile(
        url=args.url or f"{instance.config.server.base_url}/scep",
        ca_certificate=load_key_material(instance).ca.certificate,
        subject=subject,
        challenge=challenge,
        sans=tuple(args.san),
        key_size=args.key_size,
        key_usage=_listed(args.key_usage),
        name=args.name,
    )


def cmd_profile_apple(args) -> int:
    instance = open_instance(args)
    try:
        profile = _profile(args, instance)
        data = json.dumps(profile.as_json(), indent=2).encode() if args.json else profile.mobileconfig()
    except ValueError as exc:
        return usage(f"error: {exc}")
    if args.out:
        args.out.write_bytes(data)
        err(f"wrote {args.out}")
    else:
        sys.stdout.write(data.decode())
    return EXIT_OK


def _add_challenge_issue(group) -> None:
    p = command(group, "issue", cmd_challenge_issue, "a signed, encrypted challenge for one enrollment")
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
    json_flag(p, "challenge, SCEP URL and expiry as JSON")


def _add_profile_apple(group) -> None:
    p = command(group, "apple", cmd_profile_apple, "an Apple .mobileconfig SCEP payload (--json: the same for other MDMs)")
    p.add_argument("--subject", required=True, help="RFC 4514 subject the device asks for")
    p.add_argument("--san", action="append", default=[], help="dns:, email:, uri: or upn: (repeatable)")
    p.add_argument("--challenge", help="challenge to embed (default: the static challenge)")
    p.add_argument("--mdm-challenge", action="store_true", help="embed a fresh MDM challenge bound to this subject and SANs")
    p.add_argument("--key-size", type=int, default=2048)
    p.add_argument("--key-usage", default="digitalSignature,keyEncipherment")
    p.add_argument("--name", default="scepd", help="the CA name the profile shows")
    p.add_argument("--url", help="SCEP URL (default: [server] public_url + /scep)")
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    json_flag(p, "the settings as JSON for Android and other MDMs")


def add_parsers(sub) -> None:
    _add_challenge_issue(actions(sub, "challenge", "MDM challenges (the MDM side)"))
    _add_profile_apple(actions(sub, "profile", "enrollment profiles for MDMs", metavar="KIND"))
