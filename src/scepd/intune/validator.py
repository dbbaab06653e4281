"""IntuneValidator: every request's challenge is judged by Intune's
ScepRequestValidationFEService (`ScepActions/validateRequest`, api-version 2018-02-20).
Only the answer code "Success" lets issuance go on; Intune's other codes are scepd's error
codes of the same names; no answer, or a non-2xx one, is RegistrationPointUnavailable: no
certificate is issued without Intune's verdict."""

from __future__ import annotations

import base64
import logging
import uuid
from dataclasses import dataclass, field

from scepd.challenge.base import ChallengeRequest, ChallengeVerdict, Readiness
from scepd.intune.discovery import SCEP_VALIDATION_SERVICE, Discovery
from scepd.intune.http import IntuneUnavailable, call_json, client_for
from scepd.intune.tokens import INTUNE_SCOPE, TokenSource
from scepd.protocol.errors import ErrorCode
from scepd.store import UnitOfWork

log = logging.getLogger("scepd.intune")

SCEP_API_VERSION = "2018-02-20"
# The refusals of Microsoft's ErrorCode (IntuneScepServiceException.ErrorCode), each a scepd
# error code of the same name; another answer is not taken for one of scepd's own codes.
INTUNE_REFUSALS = frozenset(ErrorCode(name) for name in (
    "Unknown", "CertificateRequestDecodingFailed", "ChallengePasswordMissing", "ChallengeDeserializationError",
    "ChallengeDecryptionError", "ChallengeDecodingError", "ChallengeInvalidTimestamp", "ChallengeExpired",
    "SubjectNameMissing", "SubjectNameMismatch", "SubjectAltNameMissing", "SubjectAltNameMismatch",
    "KeyUsageMismatch", "KeyLengthMismatch", "EnhancedKeyUsageMissing", "EnhancedKeyUsageMismatch",
    "AadKeyIdentifierListMissing", "RegisteredKeyMismatch", "SigningCertThumbprintMismatch",
    "ScepProfileNoLongerTargetedToTheClient", "SignatureValidationFailed", "BadCertificateRequestIdInChallenge",
    "BadDeviceIdInChallenge", "BadUserIdInChallenge",
))


@dataclass(frozen=True)
class IntuneValidator:
    tokens: TokenSource = field(repr=False)
    discovery: Discovery = field(repr=False)
    caller_info: str = "scepd"
    timeout: float = 10.0
    name: str = "intune"
    problems: tuple[str, ...] = ()  # what building it found wrong (an unreadable key file)

    def readiness(self) -> Readiness:
        if self.problems:
            return tuple((False, problem) for problem in self.problems)
        t = self.tokens
        missing = [key for key, value in (("tenant_id", t.tenant_id), ("client_id", t.client_id)) if not value]
        if not (t.client_secret or (t.client_certificate and t.client_key)):
            missing.append("client_secret (or client_certificate and client_key)")
        if missing:
            return ((False, '[challenge] mode = "intune" needs [intune] ' + ", ".join(missing)),)
        # Said where an administrator looks (doctor, serve's start-up lines) until it is built.
        return ((True, f"Microsoft Intune of tenant {t.tenant_id} (mode = intune: it alone decides; "
                       "not yet told of issued certificates, nor asked for revocations)"),)

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        body = {
            "request": {
                "transactionId": request.transaction_id,
                "certificateRequest": base64.b64encode(request.csr.der).decode("ascii"),
                "callerInfo": self.caller_info,
            }
        }
        try:
            answer = self._post(request.transaction_id, body)
        except IntuneUnavailable as exc:
            return ChallengeVerdict.refuse(self.name, ErrorCode.REGISTRATION_POINT_UNAVAILABLE,
                                           f"Intune could not validate the request: {exc}")
        code = answer.get("code") if isinstance(answer, dict) else None
        if not isinstance(code, str) or not code:
            return ChallengeVerdict.refuse(self.name, ErrorCode.REGISTRATION_POINT_UNAVAILABLE,
                                           "Intune's validateRequest answer has no code")
        if code == "Success":
            return ChallengeVerdict(self.name)
        description = str(answer.get("errorDescription") or "")[:500]
        known = next((c for c in INTUNE_REFUSALS if c.value == code), None)
        if known is None:
            return ChallengeVerdict.refuse(self.name, ErrorCode.INTUNE_UNKNOWN,
                                           f"Intune answered {code[:80]!r}: {description or 'no description'}")
        return ChallengeVerdict.refuse(self.name, known, f"Intune: {description or code}")

    def _post(self, transaction_id: str, body: dict) -> object:
        """validateRequest at the discovered service; when that fails, the service is looked
        up again once and, if Intune moved it, asked there."""
        uri = self.discovery.service_uri(SCEP_VALIDATION_SERVICE)
        try:
            return self._post_to(uri, transaction_id, body)
        except IntuneUnavailable as first:
            if first.status == 401:
                self.tokens.invalidate(INTUNE_SCOPE)
            try:
                moved = self.discovery.service_uri(SCEP_VALIDATION_SERVICE, refresh=True)
            except IntuneUnavailable:
                raise first from None
            if moved == uri and first.status != 401:
                raise
            return self._post_to(moved, transaction_id, body)

    def _post_to(self, uri: str, transaction_id: str, body: dict) -> object:
        request_id = str(uuid.uuid4())
        url = f"{uri.rstrip('/')}/ScepActions/validateRequest"
        headers = {
            "Authorization": f"Bearer {self.tokens.get(INTUNE_SCOPE)}",
            "client-request-id": request_id,
            "api-version": SCEP_API_VERSION,
        }
        # The client-request-id is what Microsoft's support finds a call by; the transaction
        # ID is what scepd's own log lines carry.
        fields = {"transaction_id": transaction_id, "client_request_id": request_id, "url": url}
        try:
            answer = call_json(client_for(self.tokens.ca_bundle), "POST", url, json=body,
                               headers=headers, timeout=self.timeout)
        except IntuneUnavailable as exc:
            log.warning("intune validateRequest failed: %s", exc, extra={"fields": {**fields, "status": exc.status}})
            raise
        code = answer.get("code") if isinstance(answer, dict) else None
        log.info("intune validateRequest answered %s", code, extra={"fields": {**fields, "intune_code": code}})
        return answer
