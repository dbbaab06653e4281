"""IntuneValidator: every request's challenge is judged by Intune's
ScepRequestValidationFEService (`ScepActions/validateRequest`, api-version 2018-02-20).
Only the answer code "Success" lets issuance go on; Intune's other codes are scepd's error
codes of the same names; no answer, or a non-2xx one, is RegistrationPointUnavailable: no
certificate is issued without Intune's verdict."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from scepd.challenge.base import ChallengeRequest, ChallengeVerdict, Readiness
from scepd.intune.actions import IntuneConnection
from scepd.intune.http import IntuneUnavailable
from scepd.protocol.errors import ErrorCode
from scepd.store import UnitOfWork

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
    intune: IntuneConnection = field(repr=False)
    name: str = "intune"
    problems: tuple[str, ...] = ()  # what building it found wrong (an unreadable key file)

    def readiness(self) -> Readiness:
        if self.problems:
            return tuple((False, problem) for problem in self.problems)
        t = self.intune.tokens
        missing = [key for key, value in (("tenant_id", t.tenant_id), ("client_id", t.client_id)) if not value]
        if not (t.client_secret or (t.client_certificate and t.client_key)):
            missing.append("client_secret (or client_certificate and client_key)")
        if missing:
            return ((False, '[challenge] mode = "intune" needs [intune] ' + ", ".join(missing)),)
        # Said where an administrator looks (doctor, serve's start-up lines) until it is built.
        return ((True, f"Microsoft Intune of tenant {t.tenant_id} (mode = intune: it alone decides; "
                       "told of each certificate before it is delivered; 'scepd intune check' asks Entra and Graph)"),)

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        body = {
            "request": {
                "transactionId": request.transaction_id,
                "certificateRequest": base64.b64encode(request.csr.der).decode("ascii"),
                "callerInfo": self.intune.caller_info,
            }
        }
        try:
            answer = self.intune.scep_action("validateRequest", request.transaction_id, body)
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
