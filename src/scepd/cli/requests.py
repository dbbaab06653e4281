"""scepd requests: enrollment requests, and the administrator's decision on pending ones."""

from __future__ import annotations

from scepd.cli.common import (
    EXIT_OK,
    actions,
    admin,
    cli_actor,
    command,
    err,
    listing,
    open_instance,
    print_json,
    usage,
)
from scepd.protocol.errors import Refusal

# What the table of `list` shows (--json: every field).
_COLUMNS = ["transaction_id", "status", "subject", "template", "created"]


def _transaction_row(r) -> dict:
    return {"transaction_id": r.transaction_id, "status": r.status, "subject": r.subject, "template": r.template,
            "type": r.message_type, "renewal_of": r.renewal_of, "client": r.client, "serial": r.certificate_serial,
            "reason": r.reason, "created": f"{r.created_at:%Y-%m-%d %H:%M:%S}" if r.created_at else None}


def cmd_requests_show(args) -> int:
    record = open_instance(args).open_store().find_transaction(args.id)
    if record is None:
        return usage(f"no request with transaction ID {args.id}")
    print_json(_transaction_row(record))
    return EXIT_OK


def cmd_requests_approve(args) -> int:
    cert = admin(args).approve(args.id, actor=cli_actor())
    if isinstance(cert, Refusal):
        return usage(f"error: {cert.reason}")
    err(f"issued {cert.subject.rfc4514_string()} serial {cert.serial_number:x}; the device collects it by polling")
    return EXIT_OK


def cmd_requests_deny(args) -> int:
    refusal = admin(args).deny(args.id, args.reason, actor=cli_actor())
    if refusal is not None:
        return usage(f"error: {refusal.reason}")
    err(f"denied {args.id}: {args.reason}")
    return EXIT_OK


def add_parsers(sub) -> None:
    from scepd.store.states import TransactionState

    group = actions(sub, "requests", "enrollment requests (pending approval and past)")
    listing(group, "requests, newest first", TransactionState, lambda store: store.list_transactions, _transaction_row, _COLUMNS)
    command(group, "show", cmd_requests_show, "one request").add_argument("id", help="transaction ID")
    command(group, "approve", cmd_requests_approve, "issue the certificate of a pending request").add_argument(
        "id", help="transaction ID")
    p = command(group, "deny", cmd_requests_deny, "refuse a pending request; its next poll gets FAILURE with the reason")
    p.add_argument("id", help="transaction ID")
    p.add_argument("--reason", default="denied by an administrator")
