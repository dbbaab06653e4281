"""Validators that ask someone else: a registration point's validation API (scepd's own,
running on another host, or Microsoft Intune's, which has the same shape) and a third-party
MDM's allow/deny webhook. If the other side cannot be reached the request is refused:
no certificate is ever issued without a verdict."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field

import httpx

from scepd.challenge.base import ChallengeRequest, ChallengeVerdict
from scepd.errors import ErrorCode
from scepd.store import UnitOfWork

CALLER_INFO = "scepd"


@dataclass
class BearerToken:
    """A static bearer token, or one from an OAuth2 token endpoint (client credentials),
    cached until shortly before it expires."""

    static: str = ""
    token_url: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    scope: str = ""
    timeout: float = 10.0
    _cached: tuple[str, float] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def header(self) -> dict[str, str]:
        token = self.get()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self) -> str:
        if self.static or not self.token_url:
            return self.static
        with self._lock:
            if self._cached and self._cached[1] > time.monotonic():
                return self._cached[0]
            data = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client_secret}
            if self.scope:
                data["scope"] = self.scope
            response = httpx.post(self.token_url, data=data, timeout=self.timeout)
            response.raise_for_status()
            body = response.json()
            lifetime = float(body.get("expires_in", 300))
            self._cached = (body["access_token"], time.monotonic() + max(lifetime - 30, 1))
            return self._cached[0]


def hmac_signature(secret: str, body: bytes) -> str:
    """The value of the X-Scepd-Signature header: sha256=<hex HMAC of the body>."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _unavailable(name: str, reason: str) -> ChallengeVerdict:
    return ChallengeVerdict.refuse(name, ErrorCode.REGISTRATION_POINT_UNAVAILABLE, reason)


@dataclass
class RemoteRegistrationPoint:
    """Asks `<url>/validateRequest` (Intune's SCEP validation API shape) for every request."""

    url: str
    token: BearerToken
    timeout: float = 10.0
    name: str = "remote"

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        body = {
            "request": {
                "transactionId": request.transaction_id,
                "certificateRequest": base64.b64encode(request.csr.der).decode("ascii"),
                "callerInfo": CALLER_INFO,
            }
        }
        try:
            response = httpx.post(f"{self.url.rstrip('/')}/validateRequest", json=body,
                                  headers=self.token.header(), timeout=self.timeout)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            return _unavailable(self.name, f"the registration point at {self.url} cannot be reached: {exc}")
        if response.status_code // 100 != 2:
            return _unavailable(self.name, f"the registration point at {self.url} answered HTTP {response.status_code}")
        try:
            answer = response.json()
            code = answer["code"]
        except (ValueError, KeyError, TypeError):
            return _unavailable(self.name, f"the registration point at {self.url} answered something unreadable")
        if code == "Success":
            return ChallengeVerdict(self.name)
        description = str(answer.get("errorDescription") or code)
        try:
            return ChallengeVerdict.refuse(self.name, ErrorCode(code), description)
        except ValueError:
            return ChallengeVerdict.refuse(self.name, ErrorCode.CHALLENGE_DENIED, f"{code}: {description}")


@dataclass
class WebhookValidator:
    """A third-party MDM decides: POST {transactionId, challenge, certificateRequest,
    subject} to its URL, which answers {"allow": true} or {"allow": false, "reason": ...}."""

    url: str
    secret: str = field(default="", repr=False)
    timeout: float = 10.0
    name: str = "webhook"

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        body = json.dumps({
            "transactionId": request.transaction_id,
            "challenge": request.password,
            "certificateRequest": base64.b64encode(request.csr.der).decode("ascii"),
            "subject": request.csr.subject.rfc4514_string(),
        }).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers["X-Scepd-Signature"] = hmac_signature(self.secret, body)
        try:
            response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
            answer = response.json() if response.status_code // 100 == 2 else None
        except (httpx.HTTPError, ValueError) as exc:
            return _unavailable(self.name, f"the webhook {self.url} cannot be reached: {exc}")
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            return _unavailable(self.name, f"the webhook {self.url} gave no allow/deny verdict (HTTP {response.status_code})")
        if answer["allow"]:
            return ChallengeVerdict(self.name)
        return ChallengeVerdict.refuse(self.name, ErrorCode.CHALLENGE_DENIED,
                                       f"the MDM webhook denied it: {answer.get('reason') or 'no reason given'}")
