"""The registration point: does this request's challenge entitle it to a certificate?

Validators (a static challenge, NDES-style one-time passwords, MDM-signed challenges, an MDM
webhook and a remote validation API) sit behind one small interface, `ChallengeValidator`,
and answer with a `ChallengeVerdict`: accepted, or refused with a stable error code.
A validator that keeps state does its writes through the caller's unit of work, so that
consuming a one-time password commits together with the certificate it paid for.
It judges requests and issues MDM challenges from keys it is given; reading those keys from
an instance directory is the registry's (`scepd.registry.rp`).
- base: the interface and the verdict; static, otp: local secrets; mdm: MDM challenges;
  remote: a remote registration point and an MDM webhook
May import: scepd.store (for the unit of work), scepd.protocol (for the request it judges and
the X.509 names it compares), scepd.clock, scepd.peerjson, joserfc, httpx.
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
