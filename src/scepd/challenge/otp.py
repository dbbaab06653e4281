"""NDES-style one-time passwords: issued by an administrator, single use, short-lived.

Only a SHA-256 digest of each password is stored: the passwords are 128-bit random values,
so a plain digest is enough to make a stolen database useless for enrolling.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from scepd.challenge.base import ChallengeRequest, ChallengeVerdict
from scepd.protocol.errors import ErrorCode
from scepd.store import OtpOutcome, Store, UnitOfWork


def password_digest(password: str) -> str:
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def new_one_time_password(store: Store, validity: dt.timedelta) -> tuple[str, dt.datetime]:
    """Create, store (hashed) and return a fresh password with its expiry. The expiry is read
    off the store's clock, the one that decides when the password is consumed too."""
    password = secrets.token_hex(16)
    expires_at = store.clock.now() + validity
    store.add_otp(password_digest(password), expires_at)
    return password, expires_at


@dataclass(frozen=True)
class OneTimePasswordValidator:
    name: str = "otp"

    def readiness(self) -> tuple[tuple[bool, str], ...]:
        return ((True, "one-time passwords"),)

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        outcome = uow.consume_otp(password_digest(request.password or ""), request.transaction_id)
        if outcome is OtpOutcome.ACCEPTED:
            return ChallengeVerdict(self.name)
        if outcome is OtpOutcome.EXPIRED:
            return ChallengeVerdict.refuse(
                self.name, ErrorCode.ONE_TIME_PASSWORD_EXPIRED, "the one-time password has expired"
            )
        if outcome is OtpOutcome.USED:
            return ChallengeVerdict.refuse(
                self.name, ErrorCode.ONE_TIME_PASSWORD_USED, "the one-time password has already been used"
            )
        return ChallengeVerdict.refuse(self.name, ErrorCode.CHALLENGE_PASSWORD_INCORRECT, "the challenge password is wrong")
