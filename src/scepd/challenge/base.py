"""The validator interface and the verdict it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from scepd.protocol.csr import CertificationRequest
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.store import UnitOfWork


@dataclass(frozen=True)
class ChallengeRequest:
    transaction_id: str
    password: str | None
    csr: CertificationRequest


@dataclass(frozen=True)
class ChallengeVerdict:
    validator: str
    refusal: Refusal | None = None
    template: str | None = None  # a template the challenge names, over the NDES mapping
    claims: dict | None = field(default=None, repr=False)  # what an MDM challenge said

    @property
    def accepted(self) -> bool:
        return self.refusal is None

    @classmethod
    def refuse(cls, validator: str, code: ErrorCode, reason: str) -> "ChallengeVerdict":
        return cls(validator, Refusal(code, reason))


# What a validator says of itself at start-up: (it can accept requests, what it is or why not).
Readiness = tuple[tuple[bool, str], ...]


class ChallengeValidator(Protocol):
    name: str

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        """Judge the request. Writes (marking a password used) go through `uow`."""
        ...

    def readiness(self) -> Readiness:
        """Whether this validator, as built, could accept any request (start-up checks and
        doctor fail when no validator can)."""
        ...


# A refusal that merely says "not mine" ranks below one that knows the password and says
# what is wrong with it (expired, already used).
_UNSPECIFIC = {ErrorCode.CHALLENGE_PASSWORD_INCORRECT}


@dataclass(frozen=True)
class FirstAccepting:
    """Tries validators in order; the first that accepts wins. When all refuse, the most
    specific refusal is returned."""

    validators: tuple[ChallengeValidator, ...]
    name: str = "any"

    def readiness(self) -> Readiness:
        return tuple(part for validator in self.validators for part in validator.readiness())

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        if not request.password:
            return ChallengeVerdict.refuse(
                self.name, ErrorCode.CHALLENGE_PASSWORD_MISSING, "the request carries no challengePassword"
            )
        if not self.validators:
            return ChallengeVerdict.refuse(
                self.name,
                ErrorCode.CHALLENGE_PASSWORD_INCORRECT,
                "no challenge validator is configured, so no password can be accepted",
            )
        refusals = []
        for validator in self.validators:
            verdict = validator.verify(request, uow)
            if verdict.accepted:
                return verdict
            refusals.append(verdict)
        return min(refusals, key=lambda v: v.refusal.code in _UNSPECIFIC)
