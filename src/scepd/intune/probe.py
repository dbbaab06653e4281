"""What `scepd intune check` and `scepd doctor` ask Microsoft, changing nothing: a token for
Graph and one for Intune, the endpoint list of Intune's service principal, and the
application roles each token carries. Each step that fails says what to change, in the
words of Entra's admin center, since the cause is almost always the app registration: a
wrong or expired secret, a certificate that was never uploaded, or a permission that was
added but never granted admin consent."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from scepd.intune.discovery import PKI_CONNECTOR_SERVICE, SCEP_VALIDATION_SERVICE, Discovery
from scepd.intune.http import IntuneUnavailable
from scepd.intune.tokens import GRAPH_SCOPE, INTUNE_SCOPE, TokenSource

# The application permissions scepd needs, by the scope its token is asked for.
GRAPH_ROLE = "Application.Read.All"
INTUNE_ROLE = "scep_challenge_provider"
REQUIRED_ROLES = {GRAPH_SCOPE: (GRAPH_ROLE, "Microsoft Graph"), INTUNE_SCOPE: (INTUNE_ROLE, "Intune")}

_APP = "Entra admin center > App registrations > the scepd app"
_CONSENT = (f"{_APP} > API permissions: add the application permission {{role}} of {{api}}, then press "
            "'Grant admin consent for <tenant>' (a Global or Privileged Role Administrator must do it)")

# Entra's AADSTS codes that name a setting of scepd or of the app registration.
_ENTRA_FIXES = (
    ("AADSTS7000215", "the client secret is wrong",
     f"{_APP} > Certificates & secrets: create a new client secret and put its Value (not its Secret ID) in "
     "[intune] client_secret or SCEPD_INTUNE_CLIENT_SECRET"),
    ("AADSTS7000222", "the client secret has expired",
     f"{_APP} > Certificates & secrets: create a new client secret and put its Value in [intune] client_secret "
     "or SCEPD_INTUNE_CLIENT_SECRET"),
    ("AADSTS700016", "the tenant has no application with this client_id",
     "set [intune] client_id to the app registration's Application (client) ID, and tenant_id to its tenant"),
    ("AADSTS90002", "Entra knows no such tenant",
     "set [intune] tenant_id to the Directory (tenant) ID or a verified domain of the tenant"),
    ("AADSTS900023", "the tenant_id is not a tenant ID or domain",
     "set [intune] tenant_id to the Directory (tenant) ID or a verified domain of the tenant"),
    ("AADSTS700027", "the client assertion's certificate is not registered for the app",
     f"{_APP} > Certificates & secrets > Certificates: upload [intune] client_certificate"),
    ("AADSTS50012", "the client assertion does not verify against the app's certificates",
     f"{_APP} > Certificates & secrets > Certificates: upload [intune] client_certificate, and check that "
     "client_key is its key"),
    ("AADSTS65001", "admin consent was never granted",
     f"{_APP} > API permissions: press 'Grant admin consent for <tenant>'"),
    ("AADSTS500011", "the tenant has no service principal for the API asked for",
     "check that the tenant has Intune licences; Intune's service principal appears with the first licence"),
)


@dataclass(frozen=True)
class Step:
    """One thing the probe asked: did it work, what was seen, and what fixes it."""

    name: str
    passed: bool
    reason: str
    fix: str = ""


@dataclass(frozen=True)
class IntuneProbe:
    steps: tuple[Step, ...]
    endpoints: dict[str, str] = field(default_factory=dict)  # providerName -> uri, of the two scepd calls
    roles: dict[str, tuple[str, ...] | None] = field(default_factory=dict)  # scope -> roles (None: not readable)

    @property
    def passed(self) -> bool:
        return all(step.passed for step in self.steps)


def token_roles(token: str) -> tuple[str, ...] | None:
    """The `roles` claim of an Entra access token, read without verifying it (only the API it
    is for can, and this is for a person to read); None when the token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    roles = claims.get("roles") if isinstance(claims, dict) else None
    if roles is None:
        return ()
    if not isinstance(roles, list):
        return None
    return tuple(str(role)[:100] for role in roles[:50])


def _entra_fix(message: str) -> tuple[str, str]:
    for code, meaning, fix in _ENTRA_FIXES:
        if code in message:
            return f"{meaning} ({code})", fix
    if "cannot be reached" in message or "ca_bundle" in message:
        return "Entra ID cannot be reached", ("check [intune] authority_url, the network path or proxy to it, and "
                                             "[intune] ca_bundle when a TLS-inspecting proxy is in the way")
    return "Entra ID gave no token", "check [intune] tenant_id, client_id and the credential against the app registration"


def _token_step(tokens: TokenSource, scope: str, roles: dict) -> Step:
    role, api = REQUIRED_ROLES[scope]
    name = f"intune.token.{'graph' if scope == GRAPH_SCOPE else 'intune'}"
    tokens.invalidate(scope)  # a check asks Entra now, not the cache of an hour ago
    try:
        token = tokens.get(scope)
    except IntuneUnavailable as exc:
        meaning, fix = _entra_fix(str(exc))
        return Step(name, False, f"{meaning}: {exc}", fix)
    granted = roles[scope] = token_roles(token)
    if granted is None:
        return Step(name, True, f"a token for {scope} (its roles cannot be read: not a JWT)")
    if role not in granted:
        return Step(name, False, f"the token for {scope} lacks the application role {role} "
                                 f"(it has: {', '.join(granted) or 'none'})",
                    _CONSENT.format(role=role, api=api))
    return Step(name, True, f"a token for {scope} with the role {role}")


def _discovery_step(discovery: Discovery, endpoints: dict) -> list[Step]:
    uris: dict[str, str] = {}
    try:
        for service in (SCEP_VALIDATION_SERVICE, PKI_CONNECTOR_SERVICE):
            # Read afresh once (the list may have moved since it was cached), then from that read.
            uris[service] = discovery.service_uri(service, refresh=not uris)
    except IntuneUnavailable as exc:
        text = str(exc)
        if exc.status == 403 or "Authorization_RequestDenied" in text:
            return [Step("intune.discovery", False, f"Graph refused the endpoint list: {exc}",
                         _CONSENT.format(role=GRAPH_ROLE, api="Microsoft Graph"))]
        if "lists no" in text:
            return [Step("intune.discovery", False, text,
                         "check that the tenant has Intune licences and that graph_url is Microsoft Graph")]
        return [Step("intune.discovery", False, f"Graph's endpoint list cannot be read: {exc}",
                     "check [intune] graph_url and the network path to it")]
    endpoints.update(uris)
    return [Step("intune.discovery", True,
                 f"{SCEP_VALIDATION_SERVICE} at {uris[SCEP_VALIDATION_SERVICE]}, "
                 f"{PKI_CONNECTOR_SERVICE} at {uris[PKI_CONNECTOR_SERVICE]}")]


def probe(tokens: TokenSource, discovery: Discovery) -> IntuneProbe:
    """Ask Entra and Graph, in the order a first enrollment does; nothing is sent to Intune's
    services themselves, so that a check never counts as a validation or a notification."""
    roles: dict[str, tuple[str, ...] | None] = {}
    endpoints: dict[str, str] = {}
    steps = [_token_step(tokens, GRAPH_SCOPE, roles)]
    if steps[0].passed:
        steps += _discovery_step(discovery, endpoints)
    steps.append(_token_step(tokens, INTUNE_SCOPE, roles))
    return IntuneProbe(tuple(steps), endpoints, roles)


__all__ = ["GRAPH_ROLE", "INTUNE_ROLE", "IntuneProbe", "Step", "probe", "token_roles"]
