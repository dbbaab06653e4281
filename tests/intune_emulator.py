"""A Microsoft Intune emulator for the tests, written from Microsoft's published protocol
(microsoft/Intune-Resource-Access, src/CsrValidation, and Entra ID's OAuth2 documentation),
not from scepd's code: Entra's token endpoint, Graph's endpoint list of Intune's service
principal and the ScepRequestValidationFEService's `ScepActions/validateRequest`,
`successNotification` and `failureNotification`, and the PkiConnectorFEService's
`downloadRevocationRequests` and `uploadRevocationResults`, over HTTPS
with a certificate from a test CA. It checks every header and field it is sent, answers 400
with the reason when one is wrong (and keeps the reason in `errors`), and records the order
of events in `events`."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AttributeOID, NameOID

INTUNE_APP_ID = "0000000a-0000-0000-c000-000000000000"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
INTUNE_SCOPE = "https://api.manage.microsoft.com//.default"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intune emulator test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "emulator-ca.pem", directory / "emulator.pem", directory / "emulator.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class Refuse(Exception):
    """A request the real service would reject: answered 400 and kept in `errors`."""


class Unavailable(Exception):
    """validateRequest answers with this HTTP status (no JSON verdict)."""


class Forbidden(Exception):
    """A token without the application role the call needs: 403, in Graph's error format."""


class IntuneEmulator:
    def __init__(self, directory: Path, *, tenant: str = "contoso.onmicrosoft.com", client_id: str | None = None,
                 client_secret: str = "", client_certificate: x509.Certificate | None = None) -> None:
        self.tenant = tenant
        self.client_id = client_id or str(uuid.uuid4())
        self.client_secret = client_secret
        self.client_certificate = client_certificate
        # What validateRequest answers, by the challenge in the CSR; anything else is refused
        # as Intune refuses a challenge it did not make.
        self.codes: dict[str, str] = {}
        self.service_path = "/scep-validation/a"
        self.validate_status: int | None = None  # set: validateRequest answers this status, as when Intune is down
        self.success_status: int | None = None  # set: successNotification answers this status
        self._validated: dict[str, tuple[str, str]] = {}  # transactionId -> (certificateRequest, code)
        # Revocation requests downloadRevocationRequests hands out (CARevocationRequest), and
        # the results uploadRevocationResults was sent (CARevocationResult).
        self.revocation_requests: list[dict] = []
        self.revocation_results: list[dict] = []
        self.events: list[tuple] = []
        self.errors: list[str] = []
        # The application roles an admin granted (with admin consent), by the API's scope:
        # Entra puts them in each access token's `roles` claim.
        self.roles = {GRAPH_SCOPE: ["Application.Read.All"], INTUNE_SCOPE: ["scep_challenge_provider"]}
        self._token_key = None
        self._tokens: dict[str, tuple[str, tuple[str, ...]]] = {}  # access token -> (scope, roles)
        self._request_ids: set[str] = set()
        self._jtis: set[str] = set()
        self._lock = threading.Lock()
        self.ca_pem, cert, key = make_tls(directory)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    # what a test looks at and changes
    @property
    def token_url(self) -> str:
        return f"{self.base}/{self.tenant}/oauth2/v2.0/token"

    def move(self, path: str) -> None:
        """Intune moves the tenant: Graph lists the new URI, the old one answers 404."""
        with self._lock:
            self.service_path = path
            self.events.append(("moved", path))

    def queue_revocation(self, serial: str, issuer_name: str) -> str:
        """Intune asks for the certificate `serial` of `issuer_name` to be revoked (a device
        was wiped); the request's requestContext."""
        context = str(uuid.uuid4())
        with self._lock:
            self.revocation_requests.append({"requestContext": context, "serialNumber": serial,
                                             "issuerName": issuer_name, "caConfiguration": ""})
        return context

    def kinds(self) -> list[str]:
        with self._lock:
            return [event[0] for event in self.events]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # the protocol
    def _record(self, *event) -> None:
        with self._lock:
            self.events.append(event)

    def _scope_of(self, headers, role: str | None = None) -> str:
        authorization = headers.get("Authorization", "")
        if not authorization.startswith("Bearer "):
            raise Refuse(f"no bearer token: Authorization = {authorization[:20]!r}")
        issued = self._tokens.get(authorization[len("Bearer "):])
        if issued is None:
            raise Refuse("a bearer token this tenant never issued")
        scope, roles = issued
        if role is not None and role not in roles:
            raise Forbidden(f"the token has no role {role}")
        return scope

    def _access_token(self, scope: str) -> str:
        """A JWT as Entra issues them (signed with the emulator's own key: only the API it is
        for verifies it), with the granted application roles."""
        from joserfc import jwt
        from joserfc.jwk import OctKey

        if self._token_key is None:
            self._token_key = OctKey.generate_key(256)
        now = int(time.time())
        claims = {"aud": scope.replace("/.default", "").rstrip("/"), "iss": f"https://sts.windows.net/{self.tenant}/",
                  "appid": self.client_id, "tid": self.tenant, "iat": now, "nbf": now, "exp": now + 3599,
                  "jti": str(uuid.uuid4())}
        if self.roles.get(scope):
            claims["roles"] = list(self.roles[scope])
        return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, self._token_key)

    def token(self, path: str, headers, body: bytes) -> dict:
        if path != f"/{self.tenant}/oauth2/v2.0/token":
            raise Refuse(f"no token endpoint at {path}")
        if not headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            raise Refuse(f"the token request is {headers.get('Content-Type')!r}, not a form")
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("ascii"), strict_parsing=True).items()}
        if form.get("grant_type") != "client_credentials":
            raise Refuse(f"grant_type {form.get('grant_type')!r}")
        if form.get("client_id") != self.client_id:
            raise Refuse("unknown client_id")
        scope = form.get("scope")
        if scope not in (GRAPH_SCOPE, INTUNE_SCOPE):
            raise Refuse(f"scope {scope!r} is neither Graph's nor Intune's")
        if "client_assertion" in form:
            self._check_assertion(form)
            method = "certificate"
        elif self.client_secret and form.get("client_secret") == self.client_secret:
            method = "secret"
        else:
            raise Refuse("AADSTS7000215: invalid client secret provided")
        expected = {"grant_type", "client_id", "scope"} | (
            {"client_assertion", "client_assertion_type"} if method == "certificate" else {"client_secret"})
        if set(form) != expected:
            raise Refuse(f"the token request has fields {sorted(form)}")
        token = self._access_token(scope)
        with self._lock:
            self._tokens[token] = (scope, tuple(self.roles.get(scope, ())))
            self.events.append(("token", scope, method))
        return {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}

    def _check_assertion(self, form: dict) -> None:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import RSAKey

        if self.client_certificate is None:
            raise Refuse("this app registration has no certificate credential")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise Refuse(f"client_assertion_type {form.get('client_assertion_type')!r}")
        key = RSAKey.import_key(self.client_certificate.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        try:
            decoded = jwt.decode(form["client_assertion"], key, algorithms=["RS256"])
        except (JoseError, ValueError) as exc:  # a bad signature, a malformed token
            raise Refuse(f"AADSTS50012: the client assertion does not verify: {exc}") from None
        header, claims = decoded.header, decoded.claims
        thumbprint = base64.urlsafe_b64encode(self.client_certificate.fingerprint(hashes.SHA1())).rstrip(b"=").decode()
        if header.get("alg") != "RS256" or header.get("x5t") != thumbprint:
            raise Refuse(f"the assertion's header {header} does not name the registered certificate")
        if claims.get("aud") != self.token_url:
            raise Refuse(f"the assertion's aud {claims.get('aud')!r} is not the token endpoint")
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            raise Refuse("the assertion's iss and sub must be the client_id")
        now = time.time()
        if not (isinstance(claims.get("nbf"), int) and isinstance(claims.get("exp"), int)
                and claims["nbf"] - 60 <= now < claims["exp"]):
            raise Refuse(f"the assertion is not valid now (nbf {claims.get('nbf')}, exp {claims.get('exp')})")
        jti = claims.get("jti")
        with self._lock:
            if not isinstance(jti, str) or not jti or jti in self._jtis:
                raise Refuse(f"the assertion's jti {jti!r} is missing or replayed")
            self._jtis.add(jti)

    def endpoints(self, path: str, headers) -> dict:
        if path != f"/v1.0/servicePrincipals/appId={INTUNE_APP_ID}/endpoints":
            raise Refuse(f"Graph has no {path}")
        if self._scope_of(headers, "Application.Read.All") != GRAPH_SCOPE:
            raise Refuse("the endpoint list needs a token for Graph")
        with self._lock:
            service = self.base + self.service_path
            self.events.append(("discovery", self.service_path))
        def entry(provider, uri):
            return {"id": str(uuid.uuid4()), "capability": "", "providerId": "", "providerName": provider,
                    "providerResourceId": "", "uri": uri}
        # Graph's spelling varies; a client compares providerName case-insensitively.
        return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#servicePrincipals('appId=...')/endpoints",
                "value": [entry("IntuneEnrollmentFEService", f"{self.base}/enrollment"),
                          entry("scepRequestValidationFEService", service),
                          entry("PkiConnectorFEService", f"{self.base}/pki-connector")]}

    def _scep_action(self, action: str, path: str, headers, body: bytes, wrapper: str, fields: set[str]) -> tuple[dict, str] | None:
        """The checks every ScepActions call passes: its path at the current service, its
        headers, and a JSON body of exactly `fields` under `wrapper`; (that object, client-request-id)."""
        with self._lock:
            current = self.service_path
        if path != f"{current}/ScepActions/{action}":
            self._record("stale", path)
            return None  # 404: not (or no longer) this tenant's service
        request_id = self._intune_headers(action, headers, "2018-02-20", role="scep_challenge_provider")
        document = json.loads(body)
        if set(document) != {wrapper} or set(document[wrapper]) != fields:
            raise Refuse(f"{action}'s body has {document!r:.300}")
        request = document[wrapper]
        if not (isinstance(request["transactionId"], str) and request["transactionId"]):
            raise Refuse("no transactionId")
        if not (isinstance(request["callerInfo"], str) and request["callerInfo"].startswith("scepd/")):
            raise Refuse(f"callerInfo {request['callerInfo']!r}")
        return request, request_id

    def _validated_request(self, action: str, notification: dict) -> None:
        """A notification is about a request Intune validated, and carries that request."""
        with self._lock:
            validated = self._validated.get(notification["transactionId"])
        if validated is None or validated[1] != "Success":
            raise Refuse(f"{action} for transaction {notification['transactionId']!r}, which Intune did not validate")
        if notification["certificateRequest"] != validated[0]:
            raise Refuse(f"{action}'s certificateRequest is not the request Intune validated")

    def success_notification(self, path: str, headers, body: bytes) -> dict | None:
        fields = {"transactionId", "certificateRequest", "certificateThumbprint", "certificateSerialNumber",
                  "certificateExpirationDateUtc", "issuingCertificateAuthority", "caConfiguration",
                  "certificateAuthority", "callerInfo"}
        checked = self._scep_action("successNotification", path, headers, body, "notification", fields)
        if checked is None:
            return None
        notification, request_id = checked
        self._validated_request("successNotification", notification)
        thumbprint, serial = notification["certificateThumbprint"], notification["certificateSerialNumber"]
        if not (isinstance(thumbprint, str) and len(thumbprint) == 40 and thumbprint == thumbprint.upper()
                and all(c in "0123456789ABCDEF" for c in thumbprint)):
            raise Refuse(f"certificateThumbprint {thumbprint!r} is not an upper-case SHA-1 hex")
        if not (isinstance(serial, str) and serial and all(c in "0123456789abcdefABCDEF" for c in serial)):
            raise Refuse(f"certificateSerialNumber {serial!r} is not hex")
        try:
            expires = dt.datetime.fromisoformat(notification["certificateExpirationDateUtc"])
        except (AttributeError, ValueError):
            raise Refuse(f"certificateExpirationDateUtc {notification['certificateExpirationDateUtc']!r}") from None
        if expires.utcoffset() != dt.timedelta(0) or expires <= dt.datetime.now(dt.UTC):
            raise Refuse(f"certificateExpirationDateUtc {expires} is not a future UTC time")
        for name in ("issuingCertificateAuthority", "caConfiguration", "certificateAuthority"):
            if not (isinstance(notification[name], str) and notification[name]):
                raise Refuse(f"{name} is empty")
        if self.success_status is not None:
            self._record("success-down", notification["transactionId"], self.success_status, time.monotonic())
            raise Unavailable(self.success_status)
        self._record("success", notification["transactionId"], thumbprint, serial, time.monotonic(), request_id)
        return {"code": "Success", "errorDescription": ""}

    def failure_notification(self, path: str, headers, body: bytes) -> dict | None:
        fields = {"transactionId", "certificateRequest", "hResult", "errorDescription", "callerInfo"}
        checked = self._scep_action("failureNotification", path, headers, body, "notification", fields)
        if checked is None:
            return None
        notification, request_id = checked
        self._validated_request("failureNotification", notification)
        hresult, description = notification["hResult"], notification["errorDescription"]
        # An HRESULT that reports a failure has its top bit set: a negative 32-bit number.
        if not (isinstance(hresult, int) and not isinstance(hresult, bool) and -2**31 <= hresult < 0):
            raise Refuse(f"hResult {hresult!r} is not a failure HRESULT")
        if not (isinstance(description, str) and 0 < len(description) <= 255):
            raise Refuse(f"errorDescription of {len(str(description))} characters")
        self._record("failure", notification["transactionId"], hresult, description, request_id)
        return {"code": "Success", "errorDescription": ""}

    def _pki_call(self, action: str, path: str, headers, body: bytes) -> dict:
        """The checks of a PkiConnectorFEService call: its path, headers and JSON body."""
        if path != f"/pki-connector/CertificateAuthorityRequests/{action}":
            raise Refuse(f"the PkiConnectorFEService has no {path}")
        self._intune_headers(action, headers, "5019-05-05")
        return json.loads(body)

    def _intune_headers(self, action: str, headers, api_version: str, role: str | None = None) -> str:
        """The headers every call to one of Intune's services carries: a token for Intune
        (with `role`, when the call needs one), the service's api-version, a new UUID as
        client-request-id, a JSON body. The client-request-id."""
        if self._scope_of(headers, role) != INTUNE_SCOPE:
            raise Refuse(f"{action} needs a token for https://api.manage.microsoft.com/")
        if headers.get("api-version") != api_version:
            raise Refuse(f"{action} api-version {headers.get('api-version')!r}")
        request_id = headers.get("client-request-id", "")
        try:
            uuid.UUID(request_id)
        except ValueError:
            raise Refuse(f"client-request-id {request_id!r} is not a UUID") from None
        with self._lock:
            if request_id in self._request_ids:
                raise Refuse(f"client-request-id {request_id} was used before")
            self._request_ids.add(request_id)
        if not headers.get("Content-Type", "").startswith("application/json"):
            raise Refuse(f"{action} sent {headers.get('Content-Type')!r}")
        return request_id

    def download_revocations(self, path: str, headers, body: bytes) -> dict:
        document = self._pki_call("downloadRevocationRequests", path, headers, body)
        if set(document) != {"downloadParameters"} or set(document["downloadParameters"]) != {"maxRequests", "issuerName"}:
            raise Refuse(f"downloadRevocationRequests' body has {document!r:.300}")
        limit, issuer = document["downloadParameters"]["maxRequests"], document["downloadParameters"]["issuerName"]
        if not (isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= 500):
            raise Refuse(f"maxRequests {limit!r} is not 1..500")
        if not (isinstance(issuer, str) and issuer):
            raise Refuse(f"issuerName {issuer!r}")
        with self._lock:
            # Handed out until their results are uploaded, as Intune does.
            listed = [r for r in self.revocation_requests if r["issuerName"] == issuer][:limit]
        self._record("download-revocations", issuer, len(listed))
        return {"value": listed}

    def upload_revocation_results(self, path: str, headers, body: bytes) -> dict:
        document = self._pki_call("uploadRevocationResults", path, headers, body)
        results = document.get("results") if set(document) == {"results"} else None
        if not (isinstance(results, list) and results):
            raise Refuse(f"uploadRevocationResults' body has {document!r:.300}")
        # Microsoft's CARequestErrorCodes, as its reference connector library names them.
        codes = {"None", "NonRetryableServiceException", "DataSerializationError", "ParameterDataInvalidError",
                 "CryptographyError", "CertificateNotFoundError", "ConflictError", "NotSupportedError",
                 "PayloadTooLargeError", "RetryableServiceException", "ServiceUnavailableException",
                 "ServiceTooBusyException", "AuthenticationException"}
        with self._lock:
            pending = {r["requestContext"] for r in self.revocation_requests}
        for result in results:
            if not isinstance(result, dict) or set(result) != {"requestContext", "succeeded", "errorCode", "errorMessage"}:
                raise Refuse(f"a revocation result has {result!r:.300}")
            if result["requestContext"] not in pending:
                raise Refuse(f"a result for requestContext {result['requestContext']!r}, which was not handed out")
            if not isinstance(result["succeeded"], bool) or result["errorCode"] not in codes:
                raise Refuse(f"a revocation result's succeeded/errorCode: {result!r:.300}")
            if result["succeeded"] != (result["errorCode"] == "None") or not isinstance(result["errorMessage"], str):
                raise Refuse(f"a revocation result contradicts itself: {result!r:.300}")
        with self._lock:
            done = {r["requestContext"] for r in results}
            self.revocation_requests = [r for r in self.revocation_requests if r["requestContext"] not in done]
            self.revocation_results.extend(results)
        self._record("upload-revocation-results", len(results))
        return {}

    def validate(self, path: str, headers, body: bytes) -> dict | None:
        with self._lock:
            current = self.service_path
        if path == f"{current}/ScepActions/validateRequest" and self.validate_status is not None:
            self._record("down", self.validate_status)
            raise Unavailable(self.validate_status)
        checked = self._scep_action("validateRequest", path, headers, body, "request",
                                    {"transactionId", "certificateRequest", "callerInfo"})
        if checked is None:
            return None
        request, request_id = checked
        csr = x509.load_der_x509_csr(base64.b64decode(request["certificateRequest"], validate=True))
        if not csr.is_signature_valid:
            raise Refuse("the certificateRequest's signature does not verify")
        try:
            challenge = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
        except x509.AttributeNotFound:
            challenge = None
        challenge = challenge.decode() if isinstance(challenge, bytes) else challenge
        code = "ChallengePasswordMissing" if challenge is None else self.codes.get(challenge, "ChallengeDecodingError")
        with self._lock:
            self._validated[request["transactionId"]] = (request["certificateRequest"], code)
        self._record("validate", request["transactionId"], code, request_id)
        return {"code": code, "errorDescription": "" if code == "Success" else f"emulated {code}"}

    def _handler(self):
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, document: dict | None) -> None:
                body = json.dumps(document or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self, method: str) -> None:
                path = urllib.parse.urlsplit(self.path).path
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
                try:
                    if method == "POST" and path.endswith("/oauth2/v2.0/token"):
                        answer = emulator.token(path, self.headers, body)
                    elif method == "GET" and path.startswith("/v1.0/"):
                        answer = emulator.endpoints(path, self.headers)
                    elif method == "POST" and path.endswith("/ScepActions/validateRequest"):
                        answer = emulator.validate(path, self.headers, body)
                    elif method == "POST" and path.endswith("/ScepActions/successNotification"):
                        answer = emulator.success_notification(path, self.headers, body)
                    elif method == "POST" and path.endswith("/ScepActions/failureNotification"):
                        answer = emulator.failure_notification(path, self.headers, body)
                    elif method == "POST" and path.endswith("/CertificateAuthorityRequests/downloadRevocationRequests"):
                        answer = emulator.download_revocations(path, self.headers, body)
                    elif method == "POST" and path.endswith("/CertificateAuthorityRequests/uploadRevocationResults"):
                        answer = emulator.upload_revocation_results(path, self.headers, body)
                    else:
                        raise Refuse(f"{method} {path} is not part of the protocol")
                except Unavailable as exc:
                    self._answer(exc.args[0], {"error": "ServiceUnavailable"})
                    return
                except Forbidden as exc:
                    emulator._record("forbidden", path, str(exc))
                    self._answer(403, {"error": {"code": "Authorization_RequestDenied",
                                                 "message": "Insufficient privileges to complete the operation."}})
                    return
                except Refuse as exc:
                    with emulator._lock:
                        emulator.errors.append(str(exc))
                    self._answer(400, {"error": "invalid_request", "error_description": str(exc)})
                    return
                if answer is None:
                    self._answer(404, {"error": "NotFound"})
                else:
                    self._answer(200, answer)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler
