"""IntuneNotifier: Intune is told of each certificate before it is delivered
(`ScepActions/successNotification`) and of each request it validated that scepd then refused
(`ScepActions/failureNotification`), with the bodies of Microsoft's published client library.
As the service's delivery gate, a successNotification that fails refuses the delivery: no
certificate reaches a device Intune was not told of. A failed failureNotification is only
logged (Microsoft: no notification about the failure of its own calls)."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from scepd.intune.actions import IntuneConnection
from scepd.intune.http import IntuneUnavailable
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.protocol.fingerprints import certificate_thumbprint
from scepd.store import TransactionRecord

log = logging.getLogger("scepd.intune")

MAX_ERROR_DESCRIPTION = 255  # what Intune keeps of a failureNotification's errorDescription

# HRESULTs as ADCS reports them (what Intune's reports show for a CA's refusal), as the
# signed 32-bit number the JSON carries.
E_INVALIDARG = -2147024809  # 0x80070057
E_FAIL = -2147467259  # 0x80004005
NTE_BAD_ALGID = -2146893816  # 0x80090008
CERTSRV_E_BAD_REQUESTSUBJECT = -2146877439  # 0x80094001
CERTSRV_E_TEMPLATE_DENIED = -2146877422  # 0x80094012
CERTSRV_E_UNSUPPORTED_CERT_TYPE = -2146875392  # 0x80094800
CERTSRV_E_KEY_LENGTH = -2146875375  # 0x80094811

HRESULTS = {
    ErrorCode.KEY_TOO_WEAK: CERTSRV_E_KEY_LENGTH,
    ErrorCode.KEY_TYPE_NOT_ALLOWED: NTE_BAD_ALGID,
    ErrorCode.SUBJECT_INVALID: CERTSRV_E_BAD_REQUESTSUBJECT,
    ErrorCode.TEMPLATE_MISSING: CERTSRV_E_UNSUPPORTED_CERT_TYPE,
    ErrorCode.RENEWAL_NOT_ALLOWED: CERTSRV_E_TEMPLATE_DENIED,
    ErrorCode.RENEWAL_TOO_EARLY: CERTSRV_E_TEMPLATE_DENIED,
    ErrorCode.RENEWAL_SUBJECT_MISMATCH: CERTSRV_E_BAD_REQUESTSUBJECT,
    ErrorCode.RENEWAL_WIDENS_IDENTITY: CERTSRV_E_TEMPLATE_DENIED,
    ErrorCode.STORE_UNAVAILABLE: E_FAIL,
    ErrorCode.INTERNAL_ERROR: E_FAIL,
}


def hresult_of(refusal: Refusal) -> int:
    """The HRESULT that fits a refusal; E_INVALIDARG for a request scepd refuses otherwise."""
    return HRESULTS.get(refusal.code, E_INVALIDARG)


def _authority_name(name: x509.Name) -> str:
    common_names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common_names[0].value) if common_names else name.rfc4514_string()


@dataclass(frozen=True)
class IntuneNotifier:
    intune: IntuneConnection = field(repr=False)

    def success(self, transaction_id: str, csr_der: bytes, certificate: x509.Certificate,
                ca_configuration: str) -> Refusal | None:
        """successNotification; a refusal (IntuneNotificationFailed) unless Intune answers
        code "Success"."""
        body = {
            "notification": {
                "transactionId": transaction_id,
                "certificateRequest": base64.b64encode(csr_der).decode("ascii"),
                "certificateThumbprint": certificate_thumbprint(certificate),
                "certificateSerialNumber": format(certificate.serial_number, "x"),
                "certificateExpirationDateUtc": certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "issuingCertificateAuthority": certificate.issuer.rfc4514_string(),
                "caConfiguration": ca_configuration,
                "certificateAuthority": _authority_name(certificate.issuer),
                "callerInfo": self.intune.caller_info,
            }
        }
        return self._post("successNotification", transaction_id, body)

    def failure(self, transaction_id: str, csr_der: bytes, hresult: int, error_description: str) -> Refusal | None:
        """failureNotification; a refusal unless Intune answers code "Success"."""
        body = {
            "notification": {
                "transactionId": transaction_id,
                "certificateRequest": base64.b64encode(csr_der).decode("ascii"),
                "hResult": hresult,
                "errorDescription": error_description[:MAX_ERROR_DESCRIPTION],
                "callerInfo": self.intune.caller_info,
            }
        }
        return self._post("failureNotification", transaction_id, body)

    def _post(self, action: str, transaction_id: str, body: dict) -> Refusal | None:
        try:
            answer = self.intune.scep_action(action, transaction_id, body)
        except IntuneUnavailable as exc:
            return Refusal(ErrorCode.INTUNE_NOTIFICATION_FAILED, f"Intune's {action} failed: {exc}")
        code = answer.get("code") if isinstance(answer, dict) else None
        if code != "Success":
            description = str(answer.get("errorDescription") or "")[:200] if isinstance(answer, dict) else ""
            return Refusal(ErrorCode.INTUNE_NOTIFICATION_FAILED,
                           f"Intune answered {action} with {str(code)[:80]!r}" + (f": {description}" if description else ""))
        return None

    # the service's delivery gate (scepd.service.enroll.DeliveryGate)
    def delivered(self, record: TransactionRecord, certificate: x509.Certificate) -> Refusal | None:
        return self.success(record.transaction_id, record.csr_der, certificate, record.template)

    def failed(self, transaction_id: str, csr_der: bytes, refusal: Refusal) -> None:
        problem = self.failure(transaction_id, csr_der, hresult_of(refusal), f"{refusal.code.value}: {refusal.reason}")
        if problem is not None:
            # Only logged: the client has its refusal already, and Intune reports the
            # request as failed once its own timeout passes.
            log.warning("intune failureNotification not accepted: %s", problem.reason,
                        extra={"fields": {"transaction_id": transaction_id, "code": refusal.code.value}})
