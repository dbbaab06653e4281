"""scepd audit: the administrative actions recorded (who, when, what, from where, result)."""

from __future__ import annotations

import datetime as dt

from scepd.cli.common import EXIT_OK, command, emit, json_flag, open_instance, usage

_COLUMNS = ["at", "actor_kind", "actor", "address", "action", "target", "result"]


def cmd_audit(args) -> int:
    from scepd.registry.config import ConfigError, parse_duration

    try:
        since = dt.datetime.now(dt.UTC) - parse_duration(args.since) if args.since else None
    except ConfigError as exc:
        return usage(f"--since: {exc}")
    store = open_instance(args).open_store()
    problems = store.check_schema()
    if problems:
        return usage(f"{problems[0]}: run 'scepd db upgrade' first")
    events = store.audit_events(since, args.limit, action=args.action)
    rows = [{"at": f"{e.at:%Y-%m-%dT%H:%M:%SZ}", "actor_kind": e.actor_kind, "actor": e.actor, "address": e.address,
             "action": e.action, "target": e.target, "result": e.result, "detail": e.detail} for e in events]
    return emit(rows, args.json, _COLUMNS) if rows or args.json else EXIT_OK


def add_parsers(sub) -> None:
    p = command(sub, "audit", cmd_audit, "administrative actions: who did what, when, from where, with what result")
    p.add_argument("--since", default="24h", help="how far back, such as 24h, 7d (default 24h; empty: all)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many, the newest (default 1000)")
    p.add_argument("--action", help="only this action, such as request.approve or console.sign_in")
    json_flag(p, "the events as JSON on stdout")
