"""scepd doctor and scepd logs: what the instance lacks, and what the server logged."""

from __future__ import annotations

import datetime as dt
import json

from scepd.cli.common import (
    EXIT_OK,
    audited,
    command,
    json_flag,
    open_instance,
    print_json,
    say,
    usage,
)

_LOGGED = ("transaction_id", "status", "result", "code", "reason", "serial", "remedy")


@audited("doctor.fix", when=lambda args: args.fix)
def cmd_doctor(args) -> int:
    from scepd.registry.checks import PASS
    from scepd.registry.doctor import exit_code, run_doctor
    from scepd.wiring import build_validators, intune_check

    results = run_doctor(open_instance(args), build_validators, fix=args.fix,
                         remote=lambda instance: intune_check(instance)[1])
    if args.json:
        print_json([r.__dict__ for r in results])
    else:
        for r in results:
            say(f"{r.status:4}  {r.name}: {r.reason}")
            if r.fix and r.status != PASS:
                say(f"      fix: {r.fix}")
    return exit_code(results)


def _wanted(entry, args, since: dt.datetime | None) -> bool:
    """Does the log entry pass the --transaction, --errors and --since filters?"""
    if not isinstance(entry, dict):
        return False
    if args.transaction and entry.get("transaction_id") != args.transaction:
        return False
    if args.errors and not (entry.get("code") or entry.get("level") in ("warning", "error")):
        return False
    try:
        return not since or dt.datetime.fromisoformat(str(entry.get("ts", ""))) >= since
    except (TypeError, ValueError):  # no time, or a naive one: not within --since
        return False


def _line(entry: dict) -> str:
    ts = str(entry.get("ts", ""))
    what = entry.get("operation") or entry.get("phase") or entry.get("msg")
    parts = [ts[:19].replace("T", " "), f"{entry.get('level', '')!s:7}", str(what)]
    parts += [f"{key}={entry[key]}" for key in _LOGGED if entry.get(key)]
    return "  ".join(parts)


def cmd_logs(args) -> int:
    from scepd.registry.config import ConfigError, parse_duration

    instance = open_instance(args)
    if not instance.config.logging.file:
        return usage("logging to a file is off ([logging] file is empty)")
    path = instance.path(instance.config.logging.file)
    try:
        since = dt.datetime.now(dt.UTC) - parse_duration(args.since) if args.since else None
    except ConfigError as exc:
        return usage(f"--since: {exc}")
    if not path.exists():
        return EXIT_OK
    # JSON lines end at LF only: splitlines() would also cut at U+2028, U+0085 and the like.
    for text in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if not _wanted(entry, args, since):
            continue
        if args.json:
            print(json.dumps(entry))
        else:
            say(_line(entry))
    return EXIT_OK


def add_parsers(sub) -> None:
    p = command(sub, "doctor", cmd_doctor, "check everything the instance needs; --fix mends what is safe")
    p.add_argument("--fix", action="store_true", help="repair what is safe and say what was done")
    json_flag(p)

    p = command(sub, "logs", cmd_logs, "the request and verification log, readable")
    p.add_argument("--transaction", help="only this transaction ID")
    p.add_argument("--errors", action="store_true", help="only refusals and warnings")
    p.add_argument("--since", help="only the last 30m, 1h, 2d ...")
    json_flag(p, "the JSON lines as stored")
