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

from scepd import peerjson
from scepd.challenge.base import ChallengeRequest, ChallengeVerdict
from scepd.protocol.errors import ErrorCode
from scepd.store import UnitOfWork

CALLER_INFO = "scepd"
# The largest answer read from a registration point, a webhook or a token endpoint: theirs
# are a few hundred bytes. Whatever answers there is not trusted to stop on its own.
MAX_ANSWER_BYTES = 65536


class UnreadableAnswer(ValueError):
    """The other side's answer is too large, too slow, compressed unasked or not JSON."""


def read_bounded(response: httpx.Response, deadline: float, timeout: float, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """A streamed answer's body, as sent (identity encoding), of at most `limit` bytes and
    complete by `deadline` (time.monotonic()); UnreadableAnswer otherwise."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnreadableAnswer(f"the answer is {encoding}-encoded, though identity was asked for")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UnreadableAnswer(f"the answer has {declared} bytes, more than the {limit} read")
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > limit:
            raise UnreadableAnswer(f"the answer has more than the {limit} bytes read")
        if time.monotonic() > deadline:
            raise UnreadableAnswer(f"the answer did not arrive within {timeout:g} s")
    return bytes(body)


def post_for_json(url: str, *, timeout: float, headers: dict | None = None, **content) -> tuple[int, object]:
    """POST and read the answer as JSON within MAX_ANSWER_BYTES and about `timeout` seconds in
    all (httpx's timeout applies to each read, so a peer trickling bytes would hold us forever).
    Returns (HTTP status, the JSON, or None when the status is not 2xx). Raises
    httpx.HTTPError when there is no answer, UnreadableAnswer when it cannot be read."""
    deadline = time.monotonic() + timeout
    # identity: read as sent, so that the size limit is the size in memory (no gzip bomb).
    headers = {**(headers or {}), "Accept-Encoding": "identity"}
    with httpx.stream("POST", url, headers=headers, timeout=timeout, **content) as response:
        if response.status_code // 100 != 2:
            return response.status_code, None
        body = read_bounded(response, deadline, timeout)
        try:
            return response.status_code, peerjson.loads(bytes(body), max_bytes=MAX_ANSWER_BYTES)
        except ValueError as exc:  # JsonRefused, malformed JSON, undecodable text
            raise UnreadableAnswer(f"the answer is not JSON: {exc}") from None


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
            status, body = post_for_json(self.token_url, data=data, timeout=self.timeout)
            if body is None:
                raise UnreadableAnswer(f"the token endpoint {self.token_url} answered HTTP {status}")
            token = body.get("access_token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise UnreadableAnswer(f"the token endpoint {self.token_url} gave no access_token")
            try:
                lifetime = float(body.get("expires_in", 300))
            except (TypeError, ValueError):
                raise UnreadableAnswer(f"the token endpoint {self.token_url} gave no usable expires_in") from None
            # min/max: NaN, infinity or a negative lifetime cannot keep a token forever.
            lifetime = min(max(lifetime - 30, 1), 86400) if lifetime == lifetime else 1
            self._cached = (token, time.monotonic() + lifetime)
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

    def readiness(self) -> tuple[tuple[bool, str], ...]:
        if not self.url:
            return ((False, '[challenge] mode = "remote" needs remote_url'),)
        return ((True, f"the registration point at {self.url} (mode = remote: it alone decides)"),)

    def verify(self, request: ChallengeRequest, uow: UnitOfWork) -> ChallengeVerdict:
        body = {
            "request": {
                "transactionId": request.transaction_id,
                "certificateRequest": base64.b64encode(request.csr.der).decode("ascii"),
                "callerInfo": CALLER_INFO,
            }
        }
        try:
            headers = self.token.header()
        except (httpx.HTTPError, ValueError) as exc:
            return _unavailable(self.name, f"no bearer token for the registration point at {self.url}: {exc}")
        try:
            status, answer = post_for_json(f"{self.url.rstrip('/')}/validateRequest", json=body,
                                           headers=headers, timeout=self.timeout)
        except UnreadableAnswer as exc:
            return _unavailable(self.name, f"the registration point at {self.url} answered something unreadable: {exc}")
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            return _unavailable(self.name, f"the registration point at {self.url} cannot be reached: {exc}")
        if answer is None:
            return _unavailable(self.name, f"the registration point at {self.url} answered HTTP {status}")
        code = answer.get("code") if isinstance(answer, dict) else None
        if not isinstance(code, str):
            return _unavailable(self.name, f"the registration point at {self.url} answered something unreadable: no code")
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

    def readiness(self) -> tuple[tuple[bool, str], ...]:
        return ((True, f"the MDM webhook {self.url}"),)

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
            status, answer = post_for_json(self.url, content=body, headers=headers, timeout=self.timeout)
        except UnreadableAnswer as exc:
            return _unavailable(self.name, f"the webhook {self.url} answered something unreadable: {exc}")
        except (httpx.HTTPError, ValueError) as exc:
            return _unavailable(self.name, f"the webhook {self.url} cannot be reached: {exc}")
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            return _unavailable(self.name, f"the webhook {self.url} gave no allow/deny verdict (HTTP {status})")
        if answer["allow"]:
            return ChallengeVerdict(self.name)
        return ChallengeVerdict.refuse(self.name, ErrorCode.CHALLENGE_DENIED,
                                       f"the MDM webhook denied it: {answer.get('reason') or 'no reason given'}")
