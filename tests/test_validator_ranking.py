"""FirstAccepting, the registration point's ranking of its validators: the first that accepts
wins, and when all refuse the most specific refusal is the answer."""

from __future__ import annotations

from dataclasses import dataclass

from scepd.challenge import ChallengeRequest, ChallengeVerdict, FirstAccepting
from scepd.protocol.errors import ErrorCode


@dataclass
class Scripted:
    """A validator that answers as told and counts its calls."""

    name: str
    code: ErrorCode | None = None  # None: accepts
    calls: int = 0

    def verify(self, request, uow):
        self.calls += 1
        if self.code is None:
            return ChallengeVerdict(self.name)
        return ChallengeVerdict.refuse(self.name, self.code, f"{self.name} says no")

    def readiness(self):
        return ((True, self.name),)


def request(password="pw"):
    return ChallengeRequest("T-1", password, csr=None)


def test_the_first_that_accepts_wins_and_the_rest_are_not_asked():
    first, second, third = Scripted("a", ErrorCode.CHALLENGE_PASSWORD_INCORRECT), Scripted("b"), Scripted("c")
    verdict = FirstAccepting((first, second, third)).verify(request(), uow=None)
    assert verdict.accepted and verdict.validator == "b"
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


def test_a_specific_refusal_outranks_not_mine():
    """'Wrong password' from validators that do not know it says less than 'expired' from the
    one that does, whatever their order."""
    for order in ((0, 1, 2), (2, 1, 0), (1, 0, 2)):
        parts = [Scripted("static", ErrorCode.CHALLENGE_PASSWORD_INCORRECT),
                 Scripted("otp", ErrorCode.ONE_TIME_PASSWORD_EXPIRED),
                 Scripted("mdm", ErrorCode.CHALLENGE_PASSWORD_INCORRECT)]
        verdict = FirstAccepting(tuple(parts[i] for i in order)).verify(request(), uow=None)
        assert not verdict.accepted
        assert verdict.refusal.code is ErrorCode.ONE_TIME_PASSWORD_EXPIRED


def test_no_password_and_no_validators_are_named_refusals():
    asked = Scripted("static")
    missing = FirstAccepting((asked,)).verify(request(password=None), uow=None)
    assert missing.refusal.code is ErrorCode.CHALLENGE_PASSWORD_MISSING and asked.calls == 0
    empty = FirstAccepting(()).verify(request(), uow=None)
    assert empty.refusal.code is ErrorCode.CHALLENGE_PASSWORD_INCORRECT


def test_readiness_is_the_sum_of_its_parts():
    ranked = FirstAccepting((Scripted("a"), Scripted("b")))
    assert ranked.readiness() == ((True, "a"), (True, "b"))
