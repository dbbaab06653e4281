"""scepd admin: the console's accounts (add, list, remove, passwd).

A password is asked for twice at a terminal without echo, or read from the first line of
standard input with --password-stdin (for scripts): never from the command line, where other
users see it in the process list. Each change is recorded in the audit trail (admin.add,
admin.passwd, admin.remove) with the OS user who made it."""

from __future__ import annotations

import getpass
import sys

from scepd.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    actions,
    audit_trail,
    cli_actor,
    command,
    emit,
    err,
    json_flag,
    open_instance,
    usage,
)
from scepd.protocol.errors import Refusal


def _accounts(args):
    from scepd.service.accounts import Accounts

    instance = open_instance(args)
    store = instance.open_store()
    problems = store.check_schema()
    if problems:
        return None, usage(f"{problems[0]}: run 'scepd db upgrade' first")
    return Accounts(store, audit=audit_trail(instance, store)), None


def _accounts_and_password(args):
    """(accounts, the new password, None), or (None, None, the exit code) when either fails."""
    accounts, failed = _accounts(args)
    if accounts is None:
        return None, None, failed
    password = _password(args)
    if password is None:
        return None, None, EXIT_REFUSED
    return accounts, password, None


def _password(args) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        err("the passwords differ")
        return None
    return first


def _done(refusal, said: str) -> int:
    if refusal is not None:
        err(f"error: {refusal.reason}")
        err(refusal.remedy)
        return EXIT_REFUSED
    err(said)
    return EXIT_OK


def cmd_add(args) -> int:
    accounts, password, failed = _accounts_and_password(args)
    if failed is not None:
        return failed
    result = accounts.add(args.name, password, args.role, actor=cli_actor())
    return _done(result if isinstance(result, Refusal) else None, f"added {args.name} ({args.role}); sign in at <server>/admin/")


def cmd_list(args) -> int:
    accounts, failed = _accounts(args)
    if accounts is None:
        return failed
    rows = [{"name": a.name, "role": a.role, "locked_until": a.locked_until, "failed_attempts": a.failed_attempts,
             "created_at": a.created_at} for a in accounts.list()]
    return emit(rows, args.json, ["name", "role", "locked_until", "created_at"])


def cmd_remove(args) -> int:
    accounts, failed = _accounts(args)
    if accounts is None:
        return failed
    return _done(accounts.remove(args.name, actor=cli_actor()), f"removed {args.name} and its sessions")


def cmd_passwd(args) -> int:
    accounts, password, failed = _accounts_and_password(args)
    if failed is not None:
        return failed
    return _done(accounts.set_password(args.name, password, actor=cli_actor()), f"new password for {args.name}; its sessions ended")


def add_parsers(sub) -> None:
    group = actions(sub, "admin", "the console's accounts (/admin)")
    for name, func, help in (("add", cmd_add, "add an account"), ("passwd", cmd_passwd, "set an account's password")):
        p = command(group, name, func, help)
        p.add_argument("name")
        p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
        if name == "add":
            p.add_argument("--role", choices=["viewer", "operator"], default="viewer",
                           help="viewer reads; operator also approves, denies, revokes and makes OTPs (default viewer)")
    p = command(group, "list", cmd_list, "list the accounts")
    json_flag(p)
    p = command(group, "remove", cmd_remove, "remove an account and end its sessions")
    p.add_argument("name")
