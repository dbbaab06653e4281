"""Which template a request is issued from (the challenge's, else NDES's mapping), and
whether the request qualifies for it; and what no template may allow."""

from __future__ import annotations

import unicodedata

from scepd.ca.templates import Template, TemplateMapping
from scepd.protocol.csr import CertificationRequest
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.service.authorities import Authorities


def _is_control(ch: str) -> bool:
    """A character that can make a name display as something else: C0/C1 controls and DEL,
    line and paragraph separators, and bidirectional overrides and isolates."""
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp") or "\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069"


class TemplateChoice:
    def __init__(self, *, templates: dict[str, Template], mapping: TemplateMapping, authorities: Authorities) -> None:
        self.templates = templates
        self.mapping = mapping
        self.authorities = authorities

    def by_mapping(self, csr: CertificationRequest) -> tuple[str, Template | None]:
        purpose = self.mapping.purpose(csr)
        name = getattr(self.mapping, purpose)
        return f"{purpose}={name}", self.templates.get(name)

    def select(self, csr: CertificationRequest, named: str | None, details: dict) -> Template | Refusal:
        """The template for this request (`named` by its challenge, else NDES's mapping),
        once the request qualifies for it."""
        if named:
            selection, template = f"challenge={named}", self.templates.get(named)
        else:
            selection, template = self.by_mapping(csr)
        details["template"] = selection
        if template is None:
            return Refusal(ErrorCode.TEMPLATE_MISSING, f"{selection} names no template")
        if self.authorities.issuer_for(template) is None:
            return Refusal(ErrorCode.TEMPLATE_MISSING, f"template {template.name} names CA {template.ca}, which is not configured")
        return template.check(csr) or template

    def subject_refusal(self, csr: CertificationRequest) -> Refusal | None:
        """Subjects that could pass for something else: control characters, our own names."""
        values = [attribute.value for attribute in csr.subject]
        values += [n.value for n in csr.subject_alternative_names if isinstance(n.value, str)]
        for value in values:
            if isinstance(value, str) and any(_is_control(ch) for ch in value):
                return Refusal(ErrorCode.SUBJECT_INVALID, f"the request names {value!r}, which holds control characters")
        if len(csr.subject) and csr.subject in self.authorities.own_names:
            return Refusal(ErrorCode.SUBJECT_INVALID,
                           f"the request asks for '{csr.subject.rfc4514_string()}', the name of this server's own CA or RA")
        return None
