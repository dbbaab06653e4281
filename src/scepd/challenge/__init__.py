"""The registration point: does this request's challenge entitle it to a certificate?

Validators (a static challenge, NDES-style one-time passwords; later MDM-signed challenges,
webhooks and a remote validation API) sit behind one small interface, `ChallengeValidator`,
and answer with a `ChallengeVerdict`: accepted, or refused with a stable error code.
A validator that keeps state does its writes through the caller's unit of work, so that
consuming a one-time password commits together with the certificate it paid for.
May import: scepd.errors, scepd.store, scepd.protocol (for the request it judges).
"""

from scepd.challenge.base import (
    ChallengeRequest,
    ChallengeValidator,
    ChallengeVerdict,
    FirstAccepting,
)
from scepd.challenge.otp import OneTimePasswordValidator, new_one_time_password
from scepd.challenge.static import StaticChallengeValidator

__all__ = [
    "ChallengeRequest",
    "ChallengeValidator",
    "ChallengeVerdict",
    "FirstAccepting",
    "OneTimePasswordValidator",
    "StaticChallengeValidator",
    "new_one_time_password",
]
