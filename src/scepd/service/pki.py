"""PKIOperation, from request bytes to CertRep bytes: the protocol opens the request, one
decider answers it, the protocol writes the reply. Every refusal ends as a signed CertRep
FAILURE, or as an HTTP 400 when the message is too broken to be answered."""

from __future__ import annotations

import logging

from cryptography import x509

from scepd.ca.crl import CrlPublisher
from scepd.clock import Clock
from scepd.protocol import MessageType
from scepd.protocol.errors import ErrorCode, KeyUnavailable, Refusal
from scepd.protocol.message import Exchange, build_cert_rep
from scepd.protocol.requests import (
    CertPoll,
    GetCert,
    GetCrl,
    PkcsReq,
    Refused,
    RenewalReq,
    RequestPolicy,
    open_request,
)
from scepd.service.authorities import Authorities
from scepd.service.ca_certs import CaCertificates
from scepd.service.enroll import Enrollment
from scepd.service.outcome import PKI_MESSAGE, OperationResult, Outcome
from scepd.service.retrieve import Retrieval
from scepd.store import Store, StoreUnavailable
from scepd.store.states import NotificationKind

log = logging.getLogger("scepd.service")

_ENROLLMENTS = (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ)


class ScepService:
    """What the SCEP routes call: the fixed answers, PKIOperation and the CRLs."""

    def __init__(self, *, authorities: Authorities, ca_certificates: CaCertificates, policy: RequestPolicy,
                 enrollment: Enrollment, retrieval: Retrieval, crls: CrlPublisher, store: Store,
                 notify: dict[str, tuple[str, ...]], clock: Clock) -> None:
        self.authorities = authorities
        self.ca_caps = ca_certificates.ca_caps
        self.ca_certs = ca_certificates.ca_certs
        self.next_ca_certs = ca_certificates.next_ca_certs
        self.policy = policy
        self.enrollment = enrollment
        self.retrieval = retrieval
        self.crls = crls
        self.store = store
        self.notify = notify
        self.clock = clock

    def crl_for(self, key_id: str) -> x509.CertificateRevocationList | Refusal | None:
        """The current CRL of the CA with this key id; None when there is none such; a
        refusal when the store cannot read it (or sign and store a new one) now."""
        ca = self.authorities.ca_for_key_id(key_id.lower())
        if ca is None:
            return None
        try:
            return self.crls.current(ca)
        except StoreUnavailable as exc:
            return Refusal(ErrorCode.STORE_UNAVAILABLE, f"the CRL cannot be read or re-signed now: {exc.reason}")

    def pki_operation(self, der: bytes, client: str | None = None) -> OperationResult:
        try:
            opened = open_request(der, recipients=self.authorities.recipients, known=self.authorities.known,
                                  policy=self.policy, now=self.clock.now())
        except Exception:
            # open_request refuses whatever a peer can send; this is a bug, and before there
            # is an exchange nothing can be signed back: a 400 with the code, never a 500.
            log.exception("bug while opening a PKIOperation")
            opened = Refused(Refusal(ErrorCode.INTERNAL_ERROR, "the server failed to read the request"))
        if isinstance(opened, Refused) and opened.exchange is None:
            refusal = opened.refusal
            return OperationResult(400, "text/plain; charset=utf-8", refusal.http_text.encode(), refusal=refusal)
        exchange = opened.exchange
        details: dict = {}
        outcome = self._decide(opened, client, details)
        if outcome.refusal and exchange.message_type in _ENROLLMENTS:
            self._notify_failure(exchange, outcome.refusal, details)
        try:
            body = self._cert_rep(exchange, outcome)
        except KeyUnavailable as exc:
            # The RA's token gone: no CertRep can be signed, so the code goes out as HTTP 503.
            refusal = Refusal(ErrorCode.KEY_UNAVAILABLE, exc.reason)
            return OperationResult(refusal.http_status, "text/plain; charset=utf-8", refusal.http_text.encode(),
                                   transaction_id=exchange.transaction_id, message_type=exchange.message_type.name,
                                   refusal=refusal)
        return OperationResult(
            200, PKI_MESSAGE, body, transaction_id=exchange.transaction_id, message_type=exchange.message_type.name,
            status=outcome.reply.status.name, refusal=outcome.refusal, serial=outcome.serial, details=details,
        )

    def _decide(self, opened, client: str | None, details: dict) -> Outcome:
        exchange: Exchange = opened.exchange
        if exchange.cipher is not None:
            details["cipher"] = exchange.cipher.value
        for weakness in exchange.weak:
            # Accepted (Go clients and older network gear offer nothing else), but an
            # administrator should know which clients still use it.
            log.warning("weak cipher: %s from client %s (transaction %r); [scep] allow_des = false refuses it",
                        weakness, client, exchange.transaction_id)
        if isinstance(opened, Refused):
            return Outcome.failure(opened.refusal)
        try:
            if isinstance(opened, (PkcsReq, RenewalReq)):
                return self.enrollment.decide(opened, client, details)
            if isinstance(opened, CertPoll):
                return self.retrieval.poll(opened)
            if isinstance(opened, (GetCert, GetCrl)):
                return self.retrieval.retrieve(opened)
            return Outcome.refuse(ErrorCode.MESSAGE_TYPE_UNSUPPORTED, f"{exchange.message_type.name} is not a request")
        except StoreUnavailable as exc:
            # Expected and transient (locked past busy_timeout, disk full): a named refusal,
            # logged once by the request's own line, with no traceback.
            return Outcome.refuse(ErrorCode.STORE_UNAVAILABLE, exc.reason)
        except KeyUnavailable as exc:  # the CA's token gone: expected too, and named
            return Outcome.refuse(ErrorCode.KEY_UNAVAILABLE, exc.reason)
        except Exception:
            log.exception("bug while answering transaction %s", exchange.transaction_id)
            return Outcome.refuse(ErrorCode.INTERNAL_ERROR, "the server failed to process the request")

    def _cert_rep(self, exchange: Exchange, outcome: Outcome) -> bytes:
        ra = self.authorities.ra
        try:
            return build_cert_rep(exchange, outcome.reply, signer_certificate=ra.certificate, signer_key=ra.key,
                                  now=self.clock.now())
        except KeyUnavailable:
            raise  # a FAILURE would need the same key
        except Exception:
            # Not expected for an opened request; if it happens the client still gets a signed
            # FAILURE (it carries no envelope to go wrong).
            log.exception("bug while writing the CertRep of %s", exchange.transaction_id)
            failure = Outcome.refuse(ErrorCode.INTERNAL_ERROR, "the server failed to write its reply")
            return build_cert_rep(exchange, failure.reply, signer_certificate=ra.certificate, signer_key=ra.key,
                                  now=self.clock.now())

    def _notify_failure(self, exchange: Exchange, refusal: Refusal, details: dict) -> None:
        targets = self.notify.get(NotificationKind.FAILURE.value, ())
        if not targets:
            # Nobody to tell: no write at all. (A refusal otherwise costs a transaction and its
            # fsync, which a flood of bad requests would turn into load on the disk.)
            return
        if refusal.code is ErrorCode.STORE_UNAVAILABLE:
            # Queuing it would wait for the same store a second time, before the reply; the
            # request's log line says it was not queued.
            details["notification"] = "not queued: the store is unavailable"
            return
        payload = {
            "transactionId": exchange.transaction_id,
            "errorCode": refusal.code.value,
            "errorDescription": refusal.reason,
            "hResult": -2147024809,  # E_INVALIDARG, as Intune's failureNotification expects a number
            "subject": details.get("subject"),
            "callerInfo": "scepd",
        }
        try:
            with self.store.unit_of_work() as uow:
                uow.add_notification(NotificationKind.FAILURE, exchange.transaction_id, payload, targets)
        except StoreUnavailable as exc:
            details["notification"] = f"not queued: {exc.reason}"
        except Exception:  # never let telling about a failure turn into another one
            log.exception("could not queue the failure notification of %s", exchange.transaction_id)
