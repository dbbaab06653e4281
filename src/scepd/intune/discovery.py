"""Where Intune's services are for this tenant: Graph lists the endpoints of Intune's
service principal (application ID 0000000a-0000-0000-c000-000000000000). Intune moves tenants
between hosts, so the list is cached until a call to a listed service fails, and then read
again once."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from scepd import metrics
from scepd.intune.http import IntuneUnavailable, call_json, client_for
from scepd.intune.tokens import GRAPH_SCOPE, TokenSource

INTUNE_APP_ID = "0000000a-0000-0000-c000-000000000000"
SCEP_VALIDATION_SERVICE = "ScepRequestValidationFEService"
PKI_CONNECTOR_SERVICE = "PkiConnectorFEService"

_cache: dict[tuple, dict[str, str]] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Discovery:
    graph_url: str
    tokens: TokenSource = field(repr=False)
    timeout: float = 10.0

    @property
    def url(self) -> str:
        return f"{self.graph_url.rstrip('/')}/v1.0/servicePrincipals/appId={INTUNE_APP_ID}/endpoints"

    def _key(self) -> tuple:
        return (self.url, self.tokens.token_url, self.tokens.client_id)

    def service_uri(self, provider: str, *, refresh: bool = False) -> str:
        """The URI of the service named `provider` (providerName, case-insensitive);
        `refresh` reads the list again. IntuneUnavailable when Graph or the list has none."""
        with _cache_lock:
            if refresh:
                _cache.pop(self._key(), None)
            services = _cache.get(self._key())
            if services is None:
                services = _cache[self._key()] = self._read()
        uri = services.get(provider.lower())
        if not uri:
            raise IntuneUnavailable(f"Graph lists no {provider} for this tenant at {self.url}"
                                    " (is the tenant licensed for Intune?)")
        return uri

    def _read(self) -> dict[str, str]:
        token = self.tokens.get(GRAPH_SCOPE)
        with metrics.timed_phase("intune_discovery"):
            answer = call_json(client_for(self.tokens.ca_bundle), "GET", self.url,
                               headers={"Authorization": f"Bearer {token}"}, timeout=self.timeout)
        entries = answer.get("value") if isinstance(answer, dict) else None
        if not isinstance(entries, list):
            raise IntuneUnavailable(f"Graph's endpoint list at {self.url} has no value list")
        services = {}
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            name, uri = entry.get("providerName"), entry.get("uri")
            if isinstance(name, str) and isinstance(uri, str) and uri.lower().startswith("https://"):
                services.setdefault(name.lower(), uri)
        return services
