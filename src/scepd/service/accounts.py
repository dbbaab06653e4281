"""The console's administrators: accounts (`scepd admin`), sign-in with lock-out, and the
sessions a signed-in browser holds. Each decision returns a value or a `Refusal`.

Passwords are hashed with Argon2id (argon2-cffi, its default cost: memory-hard, so a stolen
table is slow to guess from). A session's cookie is 32 random bytes; the store keeps only its
SHA-256, and the session ends after `IDLE` without a request or `ABSOLUTE` after sign-in,
whichever comes first. Five failed sign-ins lock an account for 15 minutes."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.store import Store
from scepd.store.accounts import AccountRecord, AccountStore, SessionRecord

IDLE = dt.timedelta(minutes=30)
ABSOLUTE = dt.timedelta(hours=12)
MAX_FAILURES = 5
LOCK_FOR = dt.timedelta(minutes=15)
MIN_PASSWORD = 12
MAX_NAME = 64


class Role(enum.StrEnum):
    VIEWER = "viewer"  # reads every page
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
    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK, hasher: PasswordHasher | None = None) -> None:
        self.rows = AccountStore(store)
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        # Verified against when the name is unknown, so that a wrong name costs what a wrong
        # password does and the time taken does not tell which names exist.
        self._decoy = self.hasher.hash(secrets.token_urlsafe(16))

    # --- accounts (scepd admin) -------------------------------------------------------------

    def add(self, name: str, password: str, role: str = Role.VIEWER) -> AccountRecord | Refusal:
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

    def remove(self, name: str) -> Refusal | None:
        if not self.rows.remove(name):
            return Refusal(ErrorCode.ACCOUNT_UNKNOWN, f"no account {name!r}")
        return None

    def set_password(self, name: str, password: str) -> Refusal | None:
        """A new password; the account's sessions end and a lock-out is lifted."""
        refusal = _check_password(password)
        if refusal:
            return refusal
        if not self.rows.set_password(name, self.hasher.hash(password)):
            return Refusal(ErrorCode.ACCOUNT_UNKNOWN, f"no account {name!r}")
        return None

    # --- sign-in and sessions ---------------------------------------------------------------

    def sign_in(self, name: str, password: str, address: str | None) -> tuple[str, SignedIn] | Refusal:
        """A new session (its cookie value and what it grants) for the right password of an
        account that is not locked. While locked even the right password is refused: the lock
        is what stops guessing."""
        now = self.clock.now()
        account = self.rows.find(name) if len(name) <= MAX_NAME else None
        if account is not None and account.locked_until and account.locked_until > now:
            return Refusal(ErrorCode.ACCOUNT_LOCKED, f"the account is locked until {account.locked_until:%H:%M:%S}Z")
        if not self._verify(account, password):
            if account is not None and self.rows.count_failure(account.name, MAX_FAILURES, LOCK_FOR):
                return Refusal(ErrorCode.ACCOUNT_LOCKED, f"{MAX_FAILURES} failed sign-ins: the account is locked "
                                                         f"for {LOCK_FOR.seconds // 60} minutes")
            return Refusal(ErrorCode.SIGN_IN_FAILED, "wrong account name or password")
        if account.failed_attempts or account.locked_until:
            self.rows.clear_failures(account.name)
        if self.hasher.check_needs_rehash(account.password_hash):
            self.rows.set_password(account.name, self.hasher.hash(password))
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

    def sign_out(self, signed_in: SignedIn) -> None:
        self.rows.remove_session(signed_in.id_sha256)
        now = self.clock.now()
        self.rows.remove_sessions_before(now - ABSOLUTE, now - IDLE)


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
