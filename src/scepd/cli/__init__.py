"""The command line: one module per command group, each with its parsers next to its commands.

Owns parsing arguments, what is printed and the exit codes; the work is done below it. Values
meant for scripts go to stdout alone (an OTP, a fingerprint, --json output); everything
addressed to a person goes to stderr. Text for a person passes through `shown`, since much of
it comes from peers (transaction IDs, subjects, failInfoText, log entries).
- common: exit codes, printing (`shown`, tables, JSON), the instance of --dir, parser helpers
- instance: init, info, serve, db upgrade
- otp, templates, requests, certs, ca (ca rollover/activate-next, ra renew), challenge
  (challenge issue, profile apple), registry (show, set, trust, token), doctor (doctor, logs),
  admin (the console's accounts: add, list, remove, passwd),
  audit (the audit trail), intune (check),
  client (getcacaps, getcacert, enroll)
May import: scepd.wiring and scepd.service (the administrator's actions, OTPs and challenges
issued as the registration point's API issues them), scepd.client, scepd.server.run (serve),
scepd.registry (the instance, its files and checks), scepd.store (listings and their states),
scepd.ca.keys (the client's key files), scepd.protocol, scepd.profiles, scepd.logs and scepd.clock
(the audit trail's time).
"""

from __future__ import annotations

import argparse

from scepd.cli import (
    admin,
    audit,
    ca,
    certs,
    challenge,
    client,
    doctor,
    instance,
    intune,
    otp,
    registry,
    requests,
    templates,
)
from scepd.cli.common import EXIT_CODES, EXIT_UNREACHABLE, EXIT_USAGE, err, shown

# In the order `scepd --help` lists them.
GROUPS = (instance, otp, templates, requests, certs, ca, doctor, challenge, registry, admin, audit, intune, client)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scepd",
        description="A self-hosted SCEP server, CA and client.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import httpx

    from scepd.client import ScepClientError
    from scepd.protocol import ProtocolError
    from scepd.registry.instance import InstanceError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InstanceError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    except (ScepClientError, ProtocolError) as exc:
        err(f"error: {exc}")
        return EXIT_UNREACHABLE
    except httpx.HTTPError as exc:
        err(f"error: cannot reach the server: {exc}")
        return EXIT_UNREACHABLE
    except OSError as exc:
        err(f"error: {exc}")
        return EXIT_UNREACHABLE if "connect" in str(exc).lower() else EXIT_USAGE


__all__ = ["build_parser", "main", "shown"]
