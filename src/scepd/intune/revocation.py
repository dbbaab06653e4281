"""IntuneRevocations: Intune's revocation requests (a device wiped or retired, a profile
removed) carried out. Every `[intune] revocation_poll_interval` one server of those sharing
the database (the one holding the store's lease "intune-revocation") asks the
PkiConnectorFEService's `CertificateAuthorityRequests/downloadRevocationRequests` for the
requests about certificates of this CA, revokes each serial through the administration (so
that the CRL is signed again) and reports each outcome with `uploadRevocationResults`, with
the names and error codes of Microsoft's published client library
(microsoft/Intune-Resource-Access, CARevocationRequest, CARevocationResult, CARequestErrorCode)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from scepd.intune.actions import IntuneConnection
from scepd.intune.discovery import PKI_CONNECTOR_SERVICE
from scepd.intune.http import IntuneUnavailable
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.store import Store
from scepd.store.errors import StoreUnavailable

log = logging.getLogger("scepd.intune")

PKI_API_VERSION = "5019-05-05"
MAX_REQUESTS = 500  # the most downloadRevocationRequests hands out at once
LEASE = "intune-revocation"
# What Intune's revocation means for the certificate: the device no longer uses it.
REASON = "cessationOfOperation"

# Microsoft's CARequestErrorCodes (com.microsoft.intune.carequest) for what
# Administration.revoke refuses; anything else is a non-retryable service error.
ERROR_CODES = {
    ErrorCode.CERTIFICATE_UNKNOWN: "CertificateNotFoundError",
    ErrorCode.CERTIFICATE_ALREADY_REVOKED: "ConflictError",  # "trying to revoke an already revoked certificate"
    ErrorCode.CA_NOT_CONFIGURED: "NotSupportedError",
    ErrorCode.STORE_UNAVAILABLE: "ServiceUnavailableException",  # retryable
}
OTHER_ERROR = "NonRetryableServiceException"
MAX_ERROR_MESSAGE = 255


@dataclass(frozen=True)
class Revoker:
    """What a round needs of the running server's services, as they are now: the CA's subject
    (the issuerName Intune files requests under) and the revocation itself."""

    issuer_name: str
    revoke: Callable[[str, str], object]  # Administration.revoke(serial, reason)


class IntuneRevocations:
    def __init__(self, store: Store, intune: IntuneConnection, revoker: Callable[[], Revoker], *,
                 interval: float, max_requests: int = MAX_REQUESTS) -> None:
        self.store = store
        self.intune = intune
        self.revoker = revoker
        self.interval = interval
        self.max_requests = max(1, min(MAX_REQUESTS, max_requests))
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _post(self, action: str, body: dict) -> object:
        return self.intune.post(PKI_CONNECTOR_SERVICE, f"CertificateAuthorityRequests/{action}", PKI_API_VERSION, body)

    def run_once(self) -> list[dict] | None:
        """One round: the results reported to Intune; None when another server holds the lease."""
        # Held past the next round, so that the holder keeps it while it runs; a server that
        # stops lets it lapse and another takes over within two intervals.
        lease = dt.timedelta(seconds=2 * self.interval + self.intune.timeout)
        if not self.store.take_lease(LEASE, self.holder, lease):
            return None
        revoker = self.revoker()
        answer = self._post("downloadRevocationRequests",
                            {"downloadParameters": {"maxRequests": self.max_requests, "issuerName": revoker.issuer_name}})
        requests = answer.get("value") if isinstance(answer, dict) else None
        if not isinstance(requests, list):
            raise IntuneUnavailable("downloadRevocationRequests answered no value list")
        results = [self._carry_out(revoker, request) for request in requests if isinstance(request, dict)]
        if results:
            self._post("uploadRevocationResults", {"results": results})
        return results

    def _carry_out(self, revoker: Revoker, request: dict) -> dict:
        context, serial = request.get("requestContext"), request.get("serialNumber")
        fields = {"request_context": str(context)[:100], "serial": str(serial)[:80]}
        if not isinstance(context, str) or not isinstance(serial, str) or not serial.strip():
            return _result(context, "ParameterDataInvalidError", "the request carries no serialNumber")
        if request.get("issuerName") not in (None, revoker.issuer_name):
            return _result(context, "CertificateNotFoundError", f"this CA is {revoker.issuer_name}, not {str(request['issuerName'])[:100]}")
        outcome = revoker.revoke(serial.strip().lower().replace(":", "").replace(" ", ""), REASON)
        if isinstance(outcome, Refusal):
            log.warning("intune revocation refused: %s", outcome.reason, extra={"fields": {**fields, "code": outcome.code.value}})
            return _result(context, ERROR_CODES.get(outcome.code, OTHER_ERROR), f"{outcome.code.value}: {outcome.reason}")
        log.info("intune revocation carried out", extra={"fields": fields})
        return _result(context, None, "")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except (IntuneUnavailable, StoreUnavailable) as exc:  # expected: tried again next round
                log.warning("intune revocation round failed: %s", getattr(exc, "reason", exc))
            except Exception:
                log.exception("intune revocation round failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scepd-intune-revocations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)


def _result(context: object, error_code: str | None, message: str) -> dict:
    return {"requestContext": context if isinstance(context, str) else "", "succeeded": error_code is None,
            "errorCode": error_code or "None", "errorMessage": message[:MAX_ERROR_MESSAGE]}
