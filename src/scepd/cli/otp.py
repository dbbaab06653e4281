"""scepd otp: single-use challenge passwords."""

from __future__ import annotations

from scepd.cli.common import actions, admin, cli_actor, command, open_instance, single_use, usage


def cmd_otp_new(args) -> int:
    from scepd.registry.config import ConfigError, parse_duration

    instance = open_instance(args)
    try:
        validity = parse_duration(args.validity or instance.config.challenge.otp_validity)
    except ConfigError as exc:
        return usage(f"--validity: {exc}")
    if not instance.config.challenge.one_time_passwords:
        return usage("one-time passwords are disabled: set [challenge] one_time_passwords = true in scepd.toml")
    password, expires = admin(args).new_one_time_password(validity, actor=cli_actor())
    return single_use(password, expires)


def add_parsers(sub) -> None:
    group = actions(sub, "otp", "one-time challenge passwords")
    p = command(group, "new", cmd_otp_new, "print a fresh single-use challenge password")
    p.add_argument("--validity", help="lifetime such as 60m, 8h, 2d (default: [challenge] otp_validity)")
