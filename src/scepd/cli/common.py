"""What every command group shares: exit codes, printing for people and for scripts, the
instance a command works on, and the parser helpers that give each command its --dir."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import unicodedata
from pathlib import Path

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_PENDING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4

EXIT_CODES = """\
Exit codes: 0 success; 1 the server refused (FAILURE) or a check warned; 2 bad usage,
configuration or instance (the message names the fix); 3 the request is pending;
4 the server could not be reached or answered something unreadable."""


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


def err(*parts) -> None:
    """A line for a person, on stderr."""
    print(*(shown(p) for p in parts), file=sys.stderr)


def say(*parts) -> None:
    """A line for a person on stdout (tables, logs): shown, like err."""
    print(*(shown(p) for p in parts))


def print_json(data) -> None:
    """`data` for a script on stdout. json.dumps escapes every non-ASCII character
    (ensure_ascii), C1 and bidi included, so peers' strings need no `shown` here."""
    print(json.dumps(data, indent=2, default=str))


def emit(rows: list[dict], as_json: bool, columns: list[str]) -> int:
    """`rows` as JSON, or as a table of `columns` for a person; EXIT_OK, which a list command
    returns."""
    if as_json:
        print_json(rows)
        return EXIT_OK
    cells = [{c: shown(row.get(c) or "") for c in columns} for row in rows]  # widths of what is printed
    widths = {c: max([len(c)] + [len(r[c]) for r in cells]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in cells:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))
    return EXIT_OK


def instance_dir(args) -> Path:
    from scepd.registry.instance import default_directory

    return args.dir or default_directory()


def overrides(args) -> dict[str, str]:
    """The configuration settings the command line gives (--db, where the command has it)."""
    return {"SCEPD_DATABASE_URL": args.db} if getattr(args, "db", None) else {}


def open_instance(args):
    """The instance the command names (--dir), with --db applied where the command has it."""
    from scepd.registry.instance import Instance

    return Instance.open(instance_dir(args), overrides(args))


def scep_url(host: str, port: int) -> str:
    bracketed = f"[{host}]" if ":" in host else host
    return f"http://{bracketed}:{port}/scep"


def single_use(secret: str, expires) -> int:
    """A one-time secret (an OTP, a challenge) for a script on stdout, its expiry for a person."""
    print(secret)
    err(f"valid once, until {expires:%Y-%m-%d %H:%M:%S}Z")
    return EXIT_OK


def admin(args):
    """The administrator's actions (approve, deny, revoke) on the instance --dir names; each
    returns its result or a Refusal, and is recorded in the audit trail (pass `actor=cli_actor()`)."""
    from scepd.wiring import build_services

    instance = open_instance(args)
    _audit_to_log_file(instance)
    return build_services(instance, instance.open_store()).admin


def cli_actor():
    """Who runs this command, as the audit trail records them (the OS user, the terminal)."""
    from scepd.service.admin import Actor

    return Actor.cli()


def _audit_to_log_file(instance) -> None:
    """The "scepd.audit" lines of this command into the instance's JSON log file, beside the
    server's (the command line logs nothing else there)."""
    import logging

    from scepd.logs import JsonLineFormatter

    logger = logging.getLogger("scepd.audit")
    name = instance.config.logging.file
    path = str(instance.path(name).resolve()) if name else None
    for handler in [h for h in logger.handlers if getattr(h, "scepd_audit", False)]:
        if handler.baseFilename == path:
            return
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO)
    if path:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(JsonLineFormatter())
        handler.scepd_audit = True
        logger.addHandler(handler)


def audited(action: str, target=lambda args: "", when=lambda args: True):
    """A command recorded in the audit trail as `action` on `target(args)` (when `when(args)`),
    for commands that change the instance without the Administration (keys, tokens, the
    configuration): "ok" for exit 0, otherwise the exit code or the exception's name."""

    def wrap(func):
        @functools.wraps(func)
        def run(args) -> int:
            code, failure = None, None
            try:
                code = func(args)
                return code
            except BaseException as exc:
                failure = type(exc).__name__
                raise
            finally:
                if when(args):
                    record_action(args, action, target(args), None if code == EXIT_OK else failure or f"exit {code}")
        return run

    return wrap


def record_action(args, action: str, target: str, result: str | None) -> None:
    """Record `action` on `target` by the person at this command line ("ok" when `result` is None)."""
    try:
        instance = open_instance(args)
    except Exception as exc:  # noqa: BLE001 - no instance (a failed init): nothing to record in
        err(f"warning: the audit trail could not record {action}: {exc}")
        return
    audit_trail(instance, instance.open_store()).record(cli_actor(), action, target, result)


def audit_trail(instance, store):
    """The audit trail this command records in: `store`'s audit_events and the instance's
    JSON log file."""
    from scepd.clock import SYSTEM_CLOCK
    from scepd.service.admin import AuditTrail

    _audit_to_log_file(instance)
    return AuditTrail(store, SYSTEM_CLOCK)


def usage(message) -> int:
    """Say what is wrong with the command or its instance (on stderr); the exit code for it."""
    err(message)
    return EXIT_USAGE


# --- parsers --------------------------------------------------------------------------------


def actions(sub, name: str, help: str, metavar: str = "ACTION"):
    """A command group (`scepd NAME ACTION`); its parsed action lands in `NAME_command`."""
    dest = f"{name.replace('-', '_')}_command"
    return sub.add_parser(name, help=help).add_subparsers(dest=dest, required=True, metavar=metavar)


def command(sub, name: str, func, help: str, *, instance: bool = True) -> argparse.ArgumentParser:
    """A command run by `func(args) -> exit code`; `instance`: it works on an instance
    directory, so it takes --dir."""
    parser = sub.add_parser(name, help=help)
    if instance:
        parser.add_argument("--dir", type=Path, default=None,
                            help="instance directory (default: $SCEPD_DIR, else ./instance)")
    parser.set_defaults(func=func)
    return parser


def json_flag(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--json", action="store_true", help=help)


def listing(group, help: str, states, query, row, columns: list[str]) -> None:
    """A `list` command of stored records, newest first, with --status (one of the enum
    `states`), --limit and --json: `query(store)(status, limit)` finds them, `row(record)` is
    what --json prints of each, `columns` what the table shows."""

    def run(args) -> int:
        records = query(open_instance(args).open_store())(args.status, args.limit)
        return emit([row(r) for r in records], args.json, columns)

    parser = command(group, "list", run, help)
    parser.add_argument("--status", choices=[s.value for s in states])
    parser.add_argument("--limit", type=int, default=100)
    json_flag(parser)
