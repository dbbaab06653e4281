"""scepd intune check: whether Entra ID and Microsoft Graph accept scepd's app registration
(both tokens, both service endpoints, the application roles), changing nothing."""

from __future__ import annotations

from scepd.cli.common import actions, command, json_flag, open_instance, print_json, say, usage


def cmd_intune_check(args) -> int:
    from scepd.registry.checks import FAIL
    from scepd.registry.doctor import exit_code
    from scepd.wiring import intune_check

    instance = open_instance(args)
    if instance.config.challenge.mode != "intune":
        return usage(f'[challenge] mode is "{instance.config.challenge.mode}", not "intune": '
                     "nothing to check (docs/intune.md, step 4, sets it)")
    found, results = intune_check(instance)
    c = instance.config.intune
    if args.json:
        print_json({
            "tenant_id": c.tenant_id,
            "client_id": c.client_id,
            "credential": "certificate" if c.client_certificate else "secret",
            "endpoints": found.endpoints if found else {},
            "roles": {scope: list(roles) if roles is not None else None
                      for scope, roles in (found.roles if found else {}).items()},
            "checks": [r.__dict__ for r in results],
        })
    else:
        say(f"tenant {c.tenant_id}, application {c.client_id}, "
            f"{'certificate' if c.client_certificate else 'secret'} credential")
        for r in results:
            say(f"{r.status:4}  {r.name}: {r.reason}")
            if r.fix and r.status == FAIL:
                say(f"      fix: {r.fix}")
        for scope, roles in (found.roles if found else {}).items():
            say(f"roles of the token for {scope}: "
                + ("(not readable)" if roles is None else ", ".join(roles) or "none"))
    return exit_code(results)  # as doctor's: 2 when a step failed, each failure names its fix


def add_parsers(sub) -> None:
    group = actions(sub, "intune", "Microsoft Intune as the registration point")
    p = command(group, "check", cmd_intune_check,
                "get both tokens and discover Intune's services; prints endpoints and roles, changes nothing")
    json_flag(p)
