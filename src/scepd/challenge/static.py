"""One shared challenge for every device (micromdm's and many labs' way)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from scepd.challenge.base import ChallengeRequest, ChallengeVerdict
from scepd.protocol.errors import ErrorCode
from scepd.store import UnitOfWork


@dataclass(frozen=True)
class StaticChallengeValidator:
    secret: str = field(repr=False)
    name: str = "static"

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("a static challenge must not be empty")

    def readiness(self) -> tuple[tuple[bool, str], ...]:
        return ((True, "the static challenge"),)

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        given = (request.password or "").encode("utf-8")
        if hmac.compare_digest(given, self.secret.encode("utf-8")):
            return ChallengeVerdict(self.name)
        return ChallengeVerdict.refuse(self.name, ErrorCode.CHALLENGE_PASSWORD_INCORRECT, "the challenge password is wrong")
