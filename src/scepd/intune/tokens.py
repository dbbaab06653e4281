"""Access tokens from Entra ID by OAuth2 client credentials, with a client secret or a
signed client assertion (RS256 JWT with the certificate's SHA-1 thumbprint as `x5t`, as
Entra expects for certificate credentials).

Plain OAuth2 over httpx rather than MSAL for Python: MSAL can be pointed elsewhere only with
`validate_authority=False` and `instance_discovery=False`, and even then fetches the
authority's OpenID metadata before the first token, keeps a cache per application object and
brings `requests` and PyJWT besides httpx and joserfc, which scepd already uses. The protocol
itself is one form POST (RFC 6749 4.4, RFC 7523 for the assertion), and the same code then
talks to Entra and to the HTTPS emulator of the tests.

Tokens are cached in the process until shortly before they expire, one cache for all
threads and for every rebuild of the services (a changed scepd.toml builds new validators,
not new tokens)."""

from __future__ import annotations

import base64
import hashlib
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

from scepd import metrics
from scepd.intune.http import IntuneUnavailable, call_json, client_for

# What Microsoft's library asks for: Graph (discovery) and Intune's services. The double
# slash is in Microsoft's own resource URL and Entra expects it.
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
INTUNE_SCOPE = "https://api.manage.microsoft.com//.default"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 600  # seconds; Entra accepts up to ten minutes and more
RENEW_BEFORE = 300  # seconds before expiry a cached token is replaced

_cache: dict[tuple, tuple[str, float]] = {}
_cache_lock = threading.Lock()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class TokenSource:
    authority_url: str
    tenant_id: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    client_certificate: bytes = field(default=b"", repr=False)  # PEM
    client_key: bytes = field(default=b"", repr=False)  # PEM
    ca_bundle: str = ""
    timeout: float = 10.0

    @property
    def token_url(self) -> str:
        return f"{self.authority_url.rstrip('/')}/{self.tenant_id}/oauth2/v2.0/token"

    def _cache_key(self, scope: str) -> tuple:
        # The credential enters the key only as a digest: the cache is never a second copy of it.
        credential = hashlib.sha256(self.client_secret.encode() + b"\0" + self.client_certificate).hexdigest()
        return (self.token_url, self.client_id, credential, scope)

    def get(self, scope: str) -> str:
        """A bearer token for `scope`; IntuneUnavailable when Entra gives none."""
        key = self._cache_key(scope)
        # One lock for fetching too: threads that all miss the cache wait for one request
        # instead of sending one each.
        with _cache_lock:
            cached = _cache.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            token, lifetime = self._fetch(scope)
            _cache[key] = (token, time.monotonic() + lifetime)
            return token

    def invalidate(self, scope: str) -> None:
        with _cache_lock:
            _cache.pop(self._cache_key(scope), None)

    def _form(self, scope: str) -> dict[str, str]:
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "scope": scope}
        if self.client_certificate:
            form["client_assertion_type"] = ASSERTION_TYPE
            try:
                form["client_assertion"] = self.client_assertion()
            except (ValueError, TypeError) as exc:
                raise IntuneUnavailable(f"[intune] client_certificate and client_key cannot sign an assertion: {exc}") from None
        else:
            form["client_secret"] = self.client_secret
        return form

    def client_assertion(self, now: float | None = None) -> str:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import RSAKey

        certificate = x509.load_pem_x509_certificate(self.client_certificate)
        now = int(time.time() if now is None else now)
        header = {"alg": "RS256", "typ": "JWT", "x5t": _b64url(certificate.fingerprint(hashes.SHA1()))}
        claims = {
            "aud": self.token_url,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        try:
            return jwt.encode(header, claims, RSAKey.import_key(self.client_key))
        except JoseError as exc:  # not an RSA key, or not a key at all
            raise ValueError(f"client_key: {exc}") from None

    def _fetch(self, scope: str) -> tuple[str, float]:
        url = self.token_url
        form = self._form(scope)
        try:
            with metrics.timed_phase("intune_token"):
                answer = call_json(client_for(self.ca_bundle), "POST", url, data=form, timeout=self.timeout)
        except IntuneUnavailable as exc:
            raise IntuneUnavailable(f"no token for {scope} from Entra ID: {exc}", exc.status) from None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise IntuneUnavailable(f"the token endpoint {url} gave no access_token")
        try:
            lifetime = float(answer.get("expires_in", 300))
        except (TypeError, ValueError):
            raise IntuneUnavailable(f"the token endpoint {url} gave no usable expires_in") from None
        # NaN, infinity or a negative lifetime cannot keep a token forever.
        if math.isnan(lifetime):
            return token, 1.0
        # A short-lived token is renewed at half its life rather than at once.
        lifetime = min(max(lifetime - min(RENEW_BEFORE, lifetime / 2), 1), 86400)
        return token, lifetime
