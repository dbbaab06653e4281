"""What an administrator decides: approving or denying a pending request, revoking a
certificate (and, on request, what was renewed from it). Every expected failure is a
`Refusal` with its code; the CLI and the console show it.

Every such action is recorded in the audit trail (`AuditTrail`): the store's audit_events and
a line of the "scepd.audit" log, with the `Actor` the caller names (the CLI's OS user, the
API's token, the console's account)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import pwd
import socket
import sys
from dataclasses import dataclass

from cryptography import x509

from scepd.ca.crl import REASONS as REVOCATION_REASONS
from scepd.ca.crl import CrlPublisher
from scepd.ca.templates import Template
from scepd.challenge.otp import new_one_time_password
from scepd.clock import Clock
from scepd.protocol.csr import parse_csr
from scepd.protocol.errors import ErrorCode, KeyUnavailable, ProtocolError, Refusal
from scepd.service.authorities import Authorities
from scepd.service.issuance import Issuance
from scepd.registry.rp import TOKEN_ID_DIGITS
from scepd.store import AuditRecord, CertificateRecord, Store, StoreUnavailable, TransactionRecord
from scepd.store.states import CertificateState, TransactionState

audit_log = logging.getLogger("scepd.audit")


@dataclass(frozen=True)
class Actor:
    """Who does an administrative action: `kind` cli, api, console, intune or internal;
    `name` the OS user, the API token's ID (as `scepd registry token list` shows it), the
    console's account; `address` the terminal and host, or the peer's IP."""

    kind: str
    name: str
    address: str = ""

    @classmethod
    def cli(cls) -> "Actor":
        """The person at this command line: the user the process runs as, by its effective
        uid (not LOGNAME or USER, which anyone sets), and who ran sudo. SUDO_USER counts only
        when sudo can have set it: running as root with SUDO_UID beside it (a user cannot
        become root without sudo or root's own say, who may then write what it likes)."""
        euid = os.geteuid()
        try:
            user = pwd.getpwuid(euid).pw_name
        except KeyError:  # no name for this uid (a container's)
            user = f"uid {euid}"
        sudo_user = os.environ.get("SUDO_USER")
        if euid == 0 and os.environ.get("SUDO_UID") and sudo_user and sudo_user != user:
            user = f"{user} (sudo by {sudo_user[:64]})"
        try:
            tty = os.ttyname(sys.stdin.fileno()) if sys.stdin and sys.stdin.isatty() else "no tty"
        except (OSError, ValueError):
            tty = "no tty"
        return cls("cli", user, f"{tty} on {socket.gethostname()}")

    @classmethod
    def api(cls, authorization: str | None, peer: str | None) -> "Actor":
        """An API caller, by the ID of the bearer token it presented (never the token)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        name = f"token {hashlib.sha256(token.encode()).hexdigest()[:TOKEN_ID_DIGITS]}" if token else "no token"
        return cls("api", name, peer or "")


INTERNAL = Actor("internal", "scepd")


def outage(exc: BaseException) -> Refusal | None:
    """The refusal an outage raised stands for (the database, an HSM's key: transient, 503);
    None for anything else, a bug."""
    if isinstance(exc, StoreUnavailable):
        return Refusal(ErrorCode.STORE_UNAVAILABLE, exc.reason)
    if isinstance(exc, KeyUnavailable):
        return Refusal(ErrorCode.KEY_UNAVAILABLE, exc.reason)
    return None


def _failure(exc: BaseException) -> str:
    """What the audit trail records of an action that raised: the outage's code, else the
    exception's name."""
    refusal = outage(exc)
    if refusal is not None:
        return refusal.code.value
    return exc.code.value if isinstance(exc, ProtocolError) else type(exc).__name__


class AuditTrail:
    """Records administrative actions in the store and in the "scepd.audit" log. A record the
    store cannot take (the database unavailable, not yet upgraded) is still logged, with why
    it was not stored: the action itself has happened and is not undone."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def record(self, actor: Actor, action: str, target: str, result: Refusal | str | None = None,
               detail: str | None = None) -> AuditRecord:
        """`result`: None for done, a Refusal (its code is recorded) or a code's text."""
        outcome = "ok" if result is None else result.code.value if isinstance(result, Refusal) else str(result)
        event = AuditRecord(at=self.clock.now(), actor_kind=actor.kind, actor=actor.name, address=actor.address,
                            action=action, target=str(target), result=outcome, detail=detail)
        fields = dataclasses.asdict(event)
        fields.pop("at")
        if isinstance(result, Refusal) and result.code is ErrorCode.STORE_UNAVAILABLE:
            # Refused because the store could not answer: asking it again would make the caller
            # wait a second busy_timeout for a write that fails alike.
            fields["stored"] = "no: the store is unavailable"
        else:
            try:
                self.store.add_audit_event(event)
            except Exception as exc:  # noqa: BLE001 - the log line below still records the action
                fields["stored"] = f"no: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        audit_log.log(logging.INFO if outcome == "ok" else logging.WARNING, "audit %s %s: %s", action, target,
                      outcome, extra={"fields": fields})
        return event


class Administration:
    """Each action takes the `actor` it is done by and records itself in `audit`."""

    def __init__(self, *, store: Store, templates: dict[str, Template], authorities: Authorities,
                 issuance: Issuance, crls: CrlPublisher, clock: Clock, audit: AuditTrail | None = None) -> None:
        self.store = store
        self.templates = templates
        self.authorities = authorities
        self.issuance = issuance
        self.crls = crls
        self.clock = clock
        self.audit = audit or AuditTrail(store, clock)

    def new_one_time_password(self, validity: dt.timedelta, actor: Actor = INTERNAL) -> tuple[str, dt.datetime]:
        """A fresh single-use challenge password (`scepd otp new`, NDES's mscep_admin page);
        only its digest is stored (and the audit trail has its expiry, not the password)."""
        password, expires = new_one_time_password(self.store, validity)
        self.audit.record(actor, "otp.new", f"expires {expires:%Y-%m-%dT%H:%M:%SZ}")
        return password, expires

    def _recorded(self, actor: Actor, action: str, target: str, run, detail):
        """`run()`, recorded as `action` on `target` however it ends: done, refused, or raising
        (an outage of the database or an HSM: the attempt is recorded with its code, and the
        exception goes on up). `detail(result)`: the record's detail; None for no result."""
        try:
            result = run()
        except BaseException as exc:
            self.audit.record(actor, action, target, _failure(exc), detail(None))
            raise
        refused = result if isinstance(result, Refusal) else None
        self.audit.record(actor, action, target, refused, detail(None if refused else result))
        return result

    def approve(self, transaction_id: str, actor: Actor = INTERNAL) -> x509.Certificate | Refusal:
        """Issue the certificate of a pending request (`scepd requests approve`)."""
        return self._recorded(actor, "request.approve", transaction_id, lambda: self._approve(transaction_id),
                              lambda cert: f"serial {cert.serial_number:x}" if cert is not None else None)

    def _approve(self, transaction_id: str) -> x509.Certificate | Refusal:
        record = self._pending(transaction_id)
        if isinstance(record, Refusal):
            return record
        template = self.templates.get(record.template)
        if template is None:
            return Refusal(ErrorCode.TEMPLATE_MISSING, f"the request's template {record.template!r} no longer exists")
        csr = parse_csr(record.csr_der, verified=True)  # checked on arrival, stored without its challenge
        with self.store.unit_of_work() as uow:
            cert = self.issuance.issue_in(uow, record, csr, template)
            if isinstance(cert, Refusal):
                uow.rollback()
                return cert
        if record.renewal_of and template.revoke_on_renewal:
            old = self.store.find_certificate(record.renewal_of)
            if old:
                self.issuance.publish_crl_after_renewal(old)
        return cert

    def deny(self, transaction_id: str, reason: str, actor: Actor = INTERNAL) -> Refusal | None:
        return self._recorded(actor, "request.deny", transaction_id, lambda: self._deny(transaction_id, reason),
                              lambda _: f"reason: {reason}"[:500])

    def _deny(self, transaction_id: str, reason: str) -> Refusal | None:
        refusal = self._pending(transaction_id)
        if isinstance(refusal, Refusal):
            return refusal
        with self.store.unit_of_work() as uow:
            if not uow.decide_pending(transaction_id, TransactionState.DENIED, reason=reason):
                return Refusal(ErrorCode.REQUEST_NOT_PENDING, f"request {transaction_id} is no longer pending")
        return None

    def _pending(self, transaction_id: str) -> TransactionRecord | Refusal:
        record = self.store.find_transaction(transaction_id)
        if record is None:
            return Refusal(ErrorCode.TRANSACTION_UNKNOWN, f"no request with transaction ID {transaction_id}")
        if record.status != TransactionState.PENDING:
            return Refusal(ErrorCode.REQUEST_NOT_PENDING, f"request {transaction_id} is {record.status}, not pending")
        return record

    def revoke(self, serial: str, reason: str, with_renewals: bool = False,
               actor: Actor = INTERNAL) -> tuple[CertificateRecord, ...] | Refusal:
        def detail(revoked) -> str:
            return (f"reason {reason}" + (f"; revoked {', '.join(r.serial for r in revoked)}" if revoked else ""))[:1000]

        return self._recorded(actor, "certificate.revoke", serial, lambda: self._revoke(serial, reason, with_renewals),
                              detail)

    def _revoke(self, serial: str, reason: str, with_renewals: bool = False) -> tuple[CertificateRecord, ...] | Refusal:
        """Revoke a certificate and, `with_renewals`, every certificate renewed from it and from
        those (`scepd certs revoke`), in one database transaction; then sign the CRL of each CA
        concerned once. Returns what was revoked, as now recorded: the certificate, then its
        renewals oldest first, leaving out those revoked before (a certificate superseded by its
        renewal is revoked already, its renewals are not)."""
        if reason not in REVOCATION_REASONS:
            return Refusal(ErrorCode.REVOCATION_REASON_UNKNOWN, f"unknown reason {reason!r}; one of {', '.join(REVOCATION_REASONS)}")
        record = self.store.find_certificate(serial)
        if record is None:
            return Refusal(ErrorCode.CERTIFICATE_UNKNOWN, f"no certificate with serial {serial}")
        chain = [record, *(self.store.renewals_of(record.serial) if with_renewals else ())]
        valid = [r for r in chain if r.status == CertificateState.VALID]
        issuers = {r.issuer_key_id: self.authorities.ca_for_key_id(r.issuer_key_id) for r in valid}
        gone = sorted(key_id for key_id, ca in issuers.items() if ca is None)
        if gone:
            # Checked before anything is revoked: a revocation no CRL can list must not happen.
            return Refusal(ErrorCode.CA_NOT_CONFIGURED, f"the issuer {gone[0]} is no longer configured; its CRL cannot be signed")
        at = self.clock.now()
        with self.store.unit_of_work() as uow:
            # uow.revoke is conditional: one revoked meanwhile (another administrator) is skipped.
            revoked = tuple(dataclasses.replace(r, status=CertificateState.REVOKED, revoked_at=at, revocation_reason=reason)
                            for r in valid if uow.revoke(r.serial, reason, at))
        if not revoked:
            return Refusal(ErrorCode.CERTIFICATE_ALREADY_REVOKED,
                           f"certificate {serial} is already revoked" + (", and so are its renewals" if len(chain) > 1 else ""))
        for key_id in dict.fromkeys(r.issuer_key_id for r in revoked):
            self.crls.issue(issuers[key_id])
        return revoked
