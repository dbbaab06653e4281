"""scepd templates: the certificate templates and the NDES mapping that picks one."""

from __future__ import annotations

import dataclasses

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
    say,
    usage,
)

_PURPOSES = ("SignatureTemplate", "EncryptionTemplate", "GeneralPurposeTemplate")


def cmd_templates_list(args) -> int:
    instance = open_instance(args)
    mapping = instance.config.template_mapping
    rows = []
    for name, t in sorted(instance.config.templates.items()):
        used_for = [k for k in _PURPOSES if getattr(mapping, k) == name]
        rows.append({"name": name, "approval": t.approval, "validity_days": t.validity_days,
                     "extended_key_usage": ",".join(t.extended_key_usage), "mapped_as": ",".join(used_for)})
    return emit(rows, args.json, ["name", "approval", "validity_days", "extended_key_usage", "mapped_as"])


def cmd_templates_show(args) -> int:
    instance = open_instance(args)
    template = instance.config.templates.get(args.name)
    if template is None:
        return usage(f"no template {args.name!r}; known: {', '.join(sorted(instance.config.templates))}")
    data = dataclasses.asdict(template)
    if args.json:
        print_json(data)
    else:
        for key, value in data.items():
            say(f"{key:22} {', '.join(value) if isinstance(value, (tuple, list)) else value}")
    return EXIT_OK


@audited("templates.reset_mapping")
def cmd_templates_reset_mapping(args) -> int:
    from scepd.registry.keyops import reset_template_mapping

    for key, name in reset_template_mapping(open_instance(args)).items():
        err(f"[template_mapping] {key} = {name}")
    return EXIT_OK


def add_parsers(sub) -> None:
    group = actions(sub, "templates", "certificate templates and the NDES mapping")
    json_flag(command(group, "list", cmd_templates_list, "templates, and which NDES mapping key uses each"))
    p = command(group, "show", cmd_templates_show, "every setting of one template")
    p.add_argument("name")
    json_flag(p)
    command(group, "reset-mapping", cmd_templates_reset_mapping, "map all three NDES purposes to IPSECIntermediateOffline")
