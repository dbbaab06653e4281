"""The registration point's HTTP API as a service, without HTTP: who may call it (API
tokens), challenges issued for the MDM side, Intune's validateRequest, and the success and
failure notifications a SCEP server sends it. Bodies come in as parsed JSON values; answers
go out as dicts or `Refusal`s, which server/api.py writes (statuses from the error table)."""

from __future__ import annotations

import base64
import datetime as dt
import functools
from collections.abc import Callable

from cryptography import x509

from scepd.challenge import ChallengeRequest, ChallengeValidator
from scepd.challenge.mdm import ExpectedRequest
from scepd.protocol import ProtocolError
from scepd.protocol.csr import parse_csr, without_challenge_password
from scepd.protocol.errors import ErrorCode, Refusal, refusal_from_protocol
from scepd.registry.config import parse_duration
from scepd.registry.instance import Instance, InstanceError
from scepd.registry.rp import issue_local_challenge, token_accepted
from scepd.store import Store, StoreUnavailable
from scepd.store.states import NotificationKind

# (what the device will ask for, a lifetime or None for the longest allowed) -> (the
# challenge, its claims); raises InstanceError when the registration point's keys are missing
# and ValueError for a lifetime beyond the allowed one (registry.rp.issue_local_challenge).
ChallengeIssuer = Callable[[ExpectedRequest, dt.timedelta | None], tuple[str, dict]]


class RegistrationPointApi:
    def __init__(self, *, api_tokens: tuple[str, ...], base_url: str, challenge_issuer: ChallengeIssuer,
                 validator: ChallengeValidator, store: Store) -> None:
        """`api_tokens`: the digests of the accepted bearer tokens ([registration_point]
        api_tokens); `base_url`: the SCEP server's, for the URL a challenge is used at;
        `validator`: this registration point's own (never a remote one)."""
        self._api_tokens = tuple(api_tokens)
        self._base_url = base_url
        self._issue = challenge_issuer
        self._validator = validator
        self._store = store

    @classmethod
    def from_instance(cls, instance: Instance, validator: ChallengeValidator, store: Store) -> RegistrationPointApi:
        """The API of `instance`'s registration point, whose own verdicts `validator` gives."""
        return cls(api_tokens=instance.config.registration_point.api_tokens, base_url=instance.config.server.base_url,
                   challenge_issuer=functools.partial(issue_local_challenge, instance), validator=validator, store=store)

    @property
    def has_tokens(self) -> bool:
        """Whether any token could be accepted (with none, the API is switched off)."""
        return bool(self._api_tokens)

    def authorize(self, authorization_header: str | None) -> Refusal | None:
        """None when the header carries an accepted bearer token."""
        if not self._api_tokens:
            return Refusal(ErrorCode.API_UNAUTHORIZED, "no API token is configured: scepd registry token new")
        scheme, _, token = (authorization_header or "").partition(" ")
        if scheme.lower() != "bearer" or not token_accepted(token.strip(), self._api_tokens):
            return Refusal(ErrorCode.API_UNAUTHORIZED, "a valid bearer token is required")
        return None

    def issue_challenge(self, body: object) -> dict | Refusal:
        """POST /api/v1/challenges: a challenge for one enrollment, bound to what the body
        says the device will ask for, valid for the body's "validity" (at most the configured
        challenge lifetime)."""
        try:
            expected, lifetime = _challenge_order(body)
            challenge, claims = self._issue(expected, lifetime)
        except ValueError as exc:  # ConfigError among them: a validity out of bounds
            return Refusal(ErrorCode.REQUEST_MALFORMED, str(exc))
        except InstanceError as exc:
            return Refusal(ErrorCode.REGISTRATION_POINT_KEY_MISSING, str(exc))
        return {
            "challenge": challenge,
            "scep_url": f"{self._base_url}/scep",
            "jti": claims["jti"],
            "expires_at": dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc).isoformat(),
        }

    def validate_request(self, transaction_id: str, csr_der: bytes) -> Refusal | None:
        """Intune's validateRequest: None when this registration point accepts the request.
        The verdict is reached inside a unit of work that a refusal rolls back, so that a
        refused request spends no one-time password; a challenge accepted here is spent."""
        try:
            csr = parse_csr(csr_der)
        except ProtocolError as exc:
            return refusal_from_protocol(exc)
        try:
            with self._store.unit_of_work() as uow:
                verdict = self._validator.verify(ChallengeRequest(transaction_id, csr.challenge_password, csr), uow)
                if not verdict.accepted:
                    uow.rollback()  # what the validator wrote (a password marked used) is undone
                    return verdict.refusal
        except StoreUnavailable as exc:
            return Refusal(ErrorCode.STORE_UNAVAILABLE, exc.reason)
        return None

    def record_received(self, kind: str, payload: dict) -> Refusal | None:
        """A notification of `kind` ("success" or "failure") sent to this registration point,
        kept in its store; a refusal when the store cannot take it now."""
        transaction_id = str(payload.get("transactionId") or "")
        request = payload.get("certificateRequest")
        if isinstance(request, str):
            # A SCEP server may tell the request with its challenge in it: not kept in clear.
            try:
                stripped = without_challenge_password(base64.b64decode(request, validate=True))
                payload = {**payload, "certificateRequest": base64.b64encode(stripped).decode("ascii")}
            except (ValueError, ProtocolError):
                payload = {**payload, "certificateRequest": None}
        try:
            with self._store.unit_of_work() as uow:
                uow.add_notification(NotificationKind.received(kind), transaction_id, payload, ())
        except StoreUnavailable as exc:
            return Refusal(ErrorCode.STORE_UNAVAILABLE, exc.reason)
        return None


def _challenge_order(body: object) -> tuple[ExpectedRequest, dt.timedelta | None]:
    """What a challenge is asked for with: ValueError (ConfigError) naming what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    claim = dict(body)
    validity = claim.pop("validity", None)
    if validity is not None and not isinstance(validity, str):
        raise ValueError("validity must be a duration such as \"10m\"")
    expected = ExpectedRequest.from_claim(claim)
    if expected.subject:
        try:
            x509.Name.from_rfc4514_string(expected.subject)
        except ValueError as exc:
            detail = f": {exc}" if str(exc) else ""  # cryptography says nothing for some ("not a DN")
            raise ValueError(f"subject {expected.subject!r} is not an RFC 4514 name{detail}") from None
    return expected, parse_duration(validity) if validity else None


__all__ = ["ChallengeIssuer", "RegistrationPointApi"]
