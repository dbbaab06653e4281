"""The console's administrators: accounts (`scepd admin`), sign-in with lock-out, and the
sessions a signed-in browser holds. Each decision returns a value or a `Refusal`.

Passwords are hashed with Argon2id (argon2-cffi, its default cost: memory-hard, so a stolen
table is slow to guess from). A session's cookie is 32 random bytes; the store keeps only its
SHA-256, and the session ends after `IDLE` without a request or `ABSOLUTE` after sign-in,
whichever comes first. Five failed sign-ins lock an account for 15 minutes.

A sign-in answers nothing that tells which names exist: an unknown name, a wrong password and
a locked account each cost one Argon2 verify and are refused alike (SignInFailed), and the
right password of a locked account is refused the same way. At most `MAX_VERIFYING` verifies
run at once (64 MiB and a CPU each): more are refused at once with ConsoleBusy. Sign-ins,
refused sign-ins, lock-outs and sign-outs, and the accounts' changes, are recorded in the
audit trail (service/admin.py's AuditTrail) with the address they came from."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
import threading
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.service.admin import Actor, AuditTrail
from scepd.store import Store
from scepd.store.accounts import AccountRecord, AccountStore, SessionRecord

IDLE = dt.timedelta(minutes=30)
ABSOLUTE = dt.timedelta(hours=12)
MAX_FAILURES = 5
LOCK_FOR = dt.timedelta(minutes=15)
MIN_PASSWORD = 12
MAX_NAME = 64
MAX_VERIFYING = 2  # Argon2 verifies at once, per process


class Role(enum.StrEnum):
    VIEWER = "viewer"  # reads every page but the audit trail
    OPERATOR = "operator"  # and approves, denies, revokes, makes one-time passwords


@dataclass(frozen=True)
class SignedIn:
    """A session as a request sees it: who, in which role, and the form token of the session."""

    account: str
    role: Role
    csrf_token: str
    id_sha256: str

    @property
    def may_act(self) -> bool:
        return self.role == Role.OPERATOR


def session_digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Accounts:
    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK, hasher: PasswordHasher | None = None,
                 audit: AuditTrail | None = None) -> None:
        self.rows = AccountStore(store)
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self.audit = audit or AuditTrail(store, clock)
        self._verifying = threading.BoundedSemaphore(MAX_VERIFYING)
        # Verified against when the name is unknown, so that a wrong name costs what a wrong
        # password does and the time taken does not tell which names exist.
        self._decoy = self.hasher.hash(secrets.token_urlsafe(16))

    # --- accounts (scepd admin) -------------------------------------------------------------

    def add(self, name: str, password: str, role: str = Role.VIEWER,
            actor: Actor | None = None) -> AccountRecord | Refusal:
        """A new account; recorded as admin.add by `actor` (when given)."""
        result = self._add(name, password, role)
        self._record(actor, "admin.add", name, result, f"role {role}")
        return result

    def _add(self, name: str, password: str, role: str) -> AccountRecord | Refusal:
        refusal = _check_name(name) or _check_password(password)
        if refusal:
            return refusal
        if role not in Role.__members__.values():
            return Refusal(ErrorCode.ROLE_NOT_ALLOWED, f"unknown role {role!r}; one of viewer, operator")
        if not self.rows.add(name, self.hasher.hash(password), Role(role).value):
            return Refusal(ErrorCode.ACCOUNT_EXISTS, f"an account {name!r} exists")
        return self.rows.find(name)

    def list(self) -> list[AccountRecord]:
        return self.rows.all()

    def remove(self, name: str, actor: Actor | None = None) -> Refusal | None:
        refusal = None if self.rows.remove(name) else Refusal(ErrorCode.ACCOUNT_UNKNOWN, f"no account {name!r}")
        self._record(actor, "admin.remove", name, refusal)
        return refusal

    def set_password(self, name: str, password: str, actor: Actor | None = None) -> Refusal | None:
        """A new password; the account's sessions end and a lock-out is lifted."""
        refusal = _check_password(password)
        if refusal is None and not self.rows.set_password(name, self.hasher.hash(password)):
            refusal = Refusal(ErrorCode.ACCOUNT_UNKNOWN, f"no account {name!r}")
        self._record(actor, "admin.passwd", name, refusal)
        return refusal

    def _record(self, actor: Actor | None, action: str, target: str, result, detail: str | None = None) -> None:
        if actor is not None:
            self.audit.record(actor, action, target[:MAX_NAME + 1], result if isinstance(result, Refusal) else None, detail)

    # --- sign-in and sessions ---------------------------------------------------------------

    def sign_in(self, name: str, password: str, address: str | None) -> tuple[str, SignedIn] | Refusal:
        """A new session (its cookie value and what it grants) for the right password of an
        account that is not locked, recorded as console.sign_in (with what refused it)."""
        if not self._verifying.acquire(blocking=False):
            return Refusal(ErrorCode.CONSOLE_BUSY, f"{MAX_VERIFYING} sign-ins are being checked: try again in a moment")
        try:
            result = self._sign_in(name, password, address)
        finally:
            self._verifying.release()
        actor = Actor("console", name[:MAX_NAME + 1], (address or "")[:64])
        self.audit.record(actor, "console.sign_in", actor.name, result if isinstance(result, Refusal) else None)
        return result

    def _sign_in(self, name: str, password: str, address: str | None) -> tuple[str, SignedIn] | Refusal:
        """While locked even the right password is refused: the lock is what stops guessing;
        and refused as a wrong one is, after the same Argon2 verify, so that neither the answer
        nor its time tells a locked account (hence one that exists) from an unknown name."""
        failed = Refusal(ErrorCode.SIGN_IN_FAILED, "wrong account name or password")
        account = self.rows.find(name) if len(name) <= MAX_NAME else None
        locked = account is not None and _locked(account, self.clock.now())
        if not self._verify(account, password):
            if account is not None and not locked and self.rows.count_failure(account.name, MAX_FAILURES, LOCK_FOR):
                self.audit.record(Actor("console", account.name, (address or "")[:64]), "console.lock_out", account.name, None,
                                  f"{MAX_FAILURES} failed sign-ins: locked for {LOCK_FOR.seconds // 60} minutes")
            return failed
        # Read again after the verify: sign-ins running beside this one may have locked it.
        account = self.rows.find(account.name) if not locked else account
        if locked or account is None or _locked(account, self.clock.now()):
            return failed
        if account.failed_attempts or account.locked_until:
            self.rows.clear_failures(account.name)
        if self.hasher.check_needs_rehash(account.password_hash):
            self.rows.set_password(account.name, self.hasher.hash(password))
        now = self.clock.now()
        session_id = secrets.token_urlsafe(32)
        record = SessionRecord(session_digest(session_id), account.name, secrets.token_urlsafe(32),
                               (address or "")[:64] or None, now, now)
        self.rows.add_session(record)
        return session_id, SignedIn(account.name, Role(account.role), record.csrf_token, record.id_sha256)

    def _verify(self, account: AccountRecord | None, password: str) -> bool:
        try:
            self.hasher.verify(account.password_hash if account else self._decoy, password)
        except (VerificationError, InvalidHashError):
            return False
        return account is not None

    def session(self, session_id: str | None) -> SignedIn | None:
        """The live session of a cookie, its idle time restarted; None for no cookie, an
        unknown one, an expired one or one whose account is gone."""
        if not session_id or len(session_id) > 128:
            return None
        now = self.clock.now()
        record = self.rows.find_session(session_digest(session_id))
        if record is None:
            return None
        if now - record.created_at > ABSOLUTE or now - record.last_seen > IDLE:
            self.rows.remove_session(record.id_sha256)
            return None
        account = self.rows.find(record.account)
        if account is None:
            return None
        self.rows.touch_session(record.id_sha256, now)
        return SignedIn(account.name, Role(account.role), record.csrf_token, record.id_sha256)

    def sign_out(self, signed_in: SignedIn, address: str | None = None) -> None:
        self.rows.remove_session(signed_in.id_sha256)
        now = self.clock.now()
        self.rows.remove_sessions_before(now - ABSOLUTE, now - IDLE)
        self.audit.record(Actor("console", signed_in.account, (address or "")[:64]), "console.sign_out", signed_in.account)


def _locked(account: AccountRecord, now: dt.datetime) -> bool:
    return account.locked_until is not None and account.locked_until > now


def csrf_matches(signed_in: SignedIn, token: str | None) -> bool:
    return bool(token) and secrets.compare_digest(signed_in.csrf_token.encode(), str(token).encode())


def _check_name(name: str) -> Refusal | None:
    if not name or len(name) > MAX_NAME or not name.isprintable() or name.strip() != name:
        return Refusal(ErrorCode.ACCOUNT_NAME_INVALID,
                       f"an account name is 1 to {MAX_NAME} printable characters, without leading or trailing spaces")
    return None


def _check_password(password: str) -> Refusal | None:
    if len(password) < MIN_PASSWORD:
        return Refusal(ErrorCode.PASSWORD_TOO_SHORT, f"the password has {len(password)} characters, fewer than {MIN_PASSWORD}")
    return None
