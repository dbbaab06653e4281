"""A call to one of Intune's services: the ScepRequestValidationFEService's `ScepActions/*`
(validateRequest, successNotification, failureNotification; api-version 2018-02-20) and the
PkiConnectorFEService's revocation calls. The same headers for each (a bearer token for
Intune, a new client-request-id, the api-version), and the service looked up again once when
a call fails, as Intune moves tenants between hosts."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from scepd import metrics
from scepd.intune.discovery import SCEP_VALIDATION_SERVICE, Discovery
from scepd.intune.http import IntuneUnavailable, call_json, client_for
from scepd.intune.tokens import INTUNE_SCOPE, TokenSource

log = logging.getLogger("scepd.intune")

SCEP_API_VERSION = "2018-02-20"


@dataclass(frozen=True)
class IntuneConnection:
    """What every caller of Intune's services holds: the tenant's tokens, the services' places
    as Graph lists them, what the calls name as their caller, and how long one may take.
    Built from [intune] by scepd.wiring; the delivery gate is handed the validator's own (the
    tokens are cached per process whichever connection asks)."""

    tokens: TokenSource = field(repr=False)
    discovery: Discovery = field(repr=False)
    caller_info: str = "scepd"
    timeout: float = 10.0

    def scep_action(self, action: str, transaction_id: str, body: dict) -> object:
        """The JSON answer of `ScepActions/{action}` at the ScepRequestValidationFEService."""
        return self.post(SCEP_VALIDATION_SERVICE, f"ScepActions/{action}", SCEP_API_VERSION, body,
                         transaction_id=transaction_id)

    def post(self, service: str, path: str, api_version: str, body: dict, *,
             transaction_id: str | None = None) -> object:
        """The JSON answer of `{path}` at the discovered `service`; when that fails, the
        service is looked up again once and, if Intune moved it (or the token was refused),
        asked there. IntuneUnavailable when neither answers."""
        uri = self.discovery.service_uri(service)
        try:
            return _post_to(self.tokens, uri, path, api_version, transaction_id, body, self.timeout)
        except IntuneUnavailable as first:
            if first.status == 401:
                self.tokens.invalidate(INTUNE_SCOPE)
            try:
                moved = self.discovery.service_uri(service, refresh=True)
            except IntuneUnavailable:
                raise first from None
            if moved == uri and first.status != 401:
                raise
            return _post_to(self.tokens, moved, path, api_version, transaction_id, body, self.timeout)


def _post_to(tokens: TokenSource, uri: str, path: str, api_version: str, transaction_id: str | None, body: dict,
             timeout: float) -> object:
    request_id = str(uuid.uuid4())
    url = f"{uri.rstrip('/')}/{path}"
    action = path.rsplit("/", 1)[-1]
    headers = {
        "Authorization": f"Bearer {tokens.get(INTUNE_SCOPE)}",
        "client-request-id": request_id,
        "api-version": api_version,
    }
    # The client-request-id is what Microsoft's support finds a call by; the transaction
    # ID is what scepd's own log lines carry.
    fields = {"client_request_id": request_id, "url": url}
    if transaction_id is not None:
        fields["transaction_id"] = transaction_id
    try:
        with metrics.timed_phase(f"intune_{action}") as timing:
            answer = call_json(client_for(tokens.ca_bundle), "POST", url, json=body, headers=headers, timeout=timeout)
            code = answer.get("code") if isinstance(answer, dict) else None
            if code not in (None, "Success"):
                timing["result"] = "refused"
    except IntuneUnavailable as exc:
        log.warning("intune %s failed: %s", action, exc, extra={"fields": {**fields, "status": exc.status}})
        raise
    code = answer.get("code") if isinstance(answer, dict) else None
    log.info("intune %s answered %s", action, code, extra={"fields": {**fields, "intune_code": code}})
    return answer
