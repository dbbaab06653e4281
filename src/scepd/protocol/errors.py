"""The one error vocabulary of scepd: every stable code with the SCEP failInfo it answers
with, the HTTP status it takes where no CertRep can carry it, and a remedy.

A refused request is a value (`Refusal`) that travels up to the edge: `server/` turns it into
a CertRep FAILURE (failInfo + failInfoText) or an HTTP status, the CLI into a message and an
exit code, and the log line carries the same code. The protocol's own refusals are members
too, which is why the table lives here, in the lowest layer. The codes are public: admins
search logs for them and docs/errors.md lists them.
May import: scepd.protocol.types only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from scepd.protocol.types import FailInfo


class ErrorCode(enum.Enum):
    # transport (answered with HTTP 4xx, no CertRep possible)
    MESSAGE_UNDECODABLE = "MessageUndecodable"
    REQUEST_TOO_LARGE = "RequestTooLarge"
    REQUEST_TIMEOUT = "RequestTimeout"
    REQUEST_MALFORMED = "RequestMalformed"
    # the HTTP APIs (answered as JSON {code, errorDescription})
    API_UNAUTHORIZED = "Unauthorized"
    API_ACTION_UNKNOWN = "NotFound"
    OPERATION_UNKNOWN = "OperationUnknown"
    MESSAGE_MISSING = "MessageMissing"
    NO_NEXT_CA = "NoNextCa"
    # the pkiMessage
    MESSAGE_SIGNATURE_INVALID = "MessageSignatureInvalid"
    MESSAGE_SIGNER_UNKNOWN = "MessageSignerUnknown"
    MESSAGE_TYPE_UNSUPPORTED = "MessageTypeUnsupported"
    MESSAGE_TIME_INVALID = "MessageTimeInvalid"
    RECIPIENT_UNKNOWN = "RecipientUnknown"
    DECRYPTION_FAILED = "DecryptionFailed"
    UNSUPPORTED_ALGORITHM = "UnsupportedAlgorithm"
    ALGORITHM_REFUSED = "AlgorithmRefused"
    # renewal, polling and retrieval
    RENEWAL_SIGNER_UNKNOWN = "RenewalSignerUnknown"
    RENEWAL_NOT_ALLOWED = "RenewalNotAllowed"
    RENEWAL_TOO_EARLY = "RenewalTooEarly"
    RENEWAL_SUBJECT_MISMATCH = "RenewalSubjectMismatch"
    RENEWAL_WIDENS_IDENTITY = "RenewalWidensIdentity"
    ISSUED_CERTIFICATE_REVOKED = "IssuedCertificateRevoked"
    ISSUED_CERTIFICATE_EXPIRED = "IssuedCertificateExpired"
    SIGNER_CERTIFICATE_UNKNOWN = "SignerCertificateUnknown"
    SIGNER_CERTIFICATE_REVOKED = "SignerCertificateRevoked"
    SIGNER_CERTIFICATE_EXPIRED = "SignerCertificateExpired"
    REQUESTER_NOT_AUTHORIZED = "RequesterNotAuthorized"
    TRANSACTION_UNKNOWN = "TransactionUnknown"
    POLL_SIGNER_MISMATCH = "PollSignerMismatch"
    REQUEST_DENIED = "RequestDenied"
    CERTIFICATE_UNKNOWN = "CertificateUnknown"
    # administrators' decisions
    REQUEST_NOT_PENDING = "RequestNotPending"
    REVOCATION_REASON_UNKNOWN = "RevocationReasonUnknown"
    CERTIFICATE_ALREADY_REVOKED = "CertificateAlreadyRevoked"
    CA_NOT_CONFIGURED = "CaNotConfigured"
    # the console's accounts and sessions (answered as HTML pages or `scepd admin`)
    SIGN_IN_FAILED = "SignInFailed"
    ACCOUNT_LOCKED = "AccountLocked"
    SESSION_REQUIRED = "SessionRequired"
    CSRF_TOKEN_INVALID = "CsrfTokenInvalid"
    ROLE_NOT_ALLOWED = "RoleNotAllowed"
    CONSOLE_NEEDS_HTTPS = "ConsoleNeedsHttps"
    CONSOLE_BUSY = "ConsoleBusy"
    ACCOUNT_UNKNOWN = "AccountUnknown"
    ACCOUNT_EXISTS = "AccountExists"
    ACCOUNT_NAME_INVALID = "AccountNameInvalid"
    PASSWORD_TOO_SHORT = "PasswordTooShort"
    ONE_TIME_PASSWORDS_DISABLED = "OneTimePasswordsDisabled"
    # the PKCS#10 request and the template
    CSR_MALFORMED = "CsrMalformed"
    CSR_SIGNATURE_INVALID = "CsrSignatureInvalid"
    KEY_TYPE_NOT_ALLOWED = "KeyTypeNotAllowed"
    KEY_TOO_WEAK = "KeyTooWeak"
    SUBJECT_INVALID = "SubjectInvalid"
    TEMPLATE_MISSING = "TemplateMissing"
    # the challenge (Intune's names where Intune has one)
    CHALLENGE_PASSWORD_MISSING = "ChallengePasswordMissing"
    CHALLENGE_DECODING_ERROR = "ChallengeDecodingError"
    CHALLENGE_DECRYPTION_ERROR = "ChallengeDecryptionError"
    CHALLENGE_DESERIALIZATION_ERROR = "ChallengeDeserializationError"
    SIGNATURE_VALIDATION_FAILED = "SignatureValidationFailed"
    SIGNING_CERT_THUMBPRINT_MISMATCH = "SigningCertThumbprintMismatch"
    CHALLENGE_EXPIRED = "ChallengeExpired"
    CHALLENGE_INVALID_TIMESTAMP = "ChallengeInvalidTimestamp"
    SUBJECT_NAME_MISMATCH = "SubjectNameMismatch"
    SUBJECT_NAME_MISSING = "SubjectNameMissing"
    SUBJECT_ALT_NAME_MISMATCH = "SubjectAltNameMismatch"
    SUBJECT_ALT_NAME_MISSING = "SubjectAltNameMissing"
    KEY_USAGE_MISMATCH = "KeyUsageMismatch"
    KEY_LENGTH_MISMATCH = "KeyLengthMismatch"
    ENHANCED_KEY_USAGE_MISMATCH = "EnhancedKeyUsageMismatch"
    ENHANCED_KEY_USAGE_MISSING = "EnhancedKeyUsageMissing"
    BAD_DEVICE_ID_IN_CHALLENGE = "BadDeviceIdInChallenge"
    # the rest of Intune's ErrorCode names (validateRequest's answers in mode = "intune")
    CERTIFICATE_REQUEST_DECODING_FAILED = "CertificateRequestDecodingFailed"
    AAD_KEY_IDENTIFIER_LIST_MISSING = "AadKeyIdentifierListMissing"
    REGISTERED_KEY_MISMATCH = "RegisteredKeyMismatch"
    SCEP_PROFILE_NO_LONGER_TARGETED = "ScepProfileNoLongerTargetedToTheClient"
    BAD_CERTIFICATE_REQUEST_ID_IN_CHALLENGE = "BadCertificateRequestIdInChallenge"
    BAD_USER_ID_IN_CHALLENGE = "BadUserIdInChallenge"
    INTUNE_UNKNOWN = "Unknown"
    INTUNE_NOTIFICATION_FAILED = "IntuneNotificationFailed"
    CHALLENGE_REPLAYED = "ChallengeReplayed"
    CHALLENGE_DENIED = "ChallengeDenied"
    REGISTRATION_POINT_KEY_MISSING = "RegistrationPointKeyMissing"
    REGISTRATION_POINT_UNAVAILABLE = "RegistrationPointUnavailable"
    CHALLENGE_PASSWORD_INCORRECT = "ChallengePasswordIncorrect"
    ONE_TIME_PASSWORD_EXPIRED = "OneTimePasswordExpired"
    ONE_TIME_PASSWORD_USED = "OneTimePasswordUsed"
    # the server itself
    STORE_UNAVAILABLE = "StoreUnavailable"
    KEY_UNAVAILABLE = "KeyUnavailable"
    INTERNAL_ERROR = "InternalError"


@dataclass(frozen=True)
class ErrorInfo:
    fail_info: FailInfo
    remedy: str
    # Where the refusal is an HTTP answer (no CertRep can carry it: a broken message, the
    # JSON APIs, CRLs); a refused PKIOperation is a 200 carrying a signed FAILURE.
    http_status: int = 400


_BR, _BMC, _BA, _BT, _BCI = (
    FailInfo.BAD_REQUEST,
    FailInfo.BAD_MESSAGE_CHECK,
    FailInfo.BAD_ALG,
    FailInfo.BAD_TIME,
    FailInfo.BAD_CERT_ID,
)

ERRORS: dict[ErrorCode, ErrorInfo] = {
    ErrorCode.MESSAGE_UNDECODABLE: ErrorInfo(_BR, "Send a DER or BER pkiMessage (RFC 8894); check the client's base64 encoding for GET."),
    ErrorCode.REQUEST_TOO_LARGE: ErrorInfo(_BR, "Shrink the request, or raise [server] max_request_bytes in scepd.toml.", http_status=413),
    ErrorCode.REQUEST_TIMEOUT: ErrorInfo(_BR, "Send the body right after the headers: it must arrive within [server] header_timeout of them (raise it in scepd.toml for very slow links).", http_status=408),
    ErrorCode.API_UNAUTHORIZED: ErrorInfo(_BR, "Send 'Authorization: Bearer <token>' with a token from 'scepd registry token new' (listed by 'scepd registry token list').", http_status=401),
    ErrorCode.API_ACTION_UNKNOWN: ErrorInfo(_BR, "Use /ScepActions/validateRequest, successNotification or failureNotification.", http_status=404),
    ErrorCode.REQUEST_MALFORMED: ErrorInfo(_BR, "Send one well-formed request: Content-Length or Transfer-Encoding but never both (RFC 9112 6.3), and for the HTTP APIs a JSON body of the documented shape, nested at most 32 levels."),
    ErrorCode.OPERATION_UNKNOWN: ErrorInfo(_BR, "Use GetCACaps, GetCACert or PKIOperation as the operation parameter."),
    ErrorCode.MESSAGE_MISSING: ErrorInfo(_BR, "PKIOperation by GET needs a base64 message parameter; by POST a body."),
    ErrorCode.NO_NEXT_CA: ErrorInfo(_BR, "GetNextCACert answers only between 'scepd ca rollover' and 'scepd ca activate-next'.", http_status=404),
    ErrorCode.MESSAGE_SIGNATURE_INVALID: ErrorInfo(_BMC, "The request was altered or signed with a key that does not match its signer certificate; regenerate it."),
    ErrorCode.MESSAGE_SIGNER_UNKNOWN: ErrorInfo(_BMC, "Include the signer certificate in the pkiMessage."),
    ErrorCode.MESSAGE_TYPE_UNSUPPORTED: ErrorInfo(_BR, "Send PKCSReq, RenewalReq, CertPoll, GetCert or GetCRL."),
    ErrorCode.MESSAGE_TIME_INVALID: ErrorInfo(_BT, "Set the device clock correctly (the signingTime is outside [scep] max_clock_skew)."),
    ErrorCode.RECIPIENT_UNKNOWN: ErrorInfo(_BMC, "Fetch the current RA certificate with GetCACert and encrypt to it."),
    ErrorCode.DECRYPTION_FAILED: ErrorInfo(_BMC, "Encrypt the request to the RA certificate from GetCACert; the content may be corrupt."),
    ErrorCode.UNSUPPORTED_ALGORITHM: ErrorInfo(_BA, "Use an algorithm listed by GetCACaps (AES or DES3; SHA-1, SHA-256 or SHA-512)."),
    ErrorCode.ALGORITHM_REFUSED: ErrorInfo(_BA, "The server's algorithm policy refuses it ([scep] allow_md5, allow_des): use AES and SHA-256 if the client can, else relax the policy."),
    ErrorCode.RENEWAL_SIGNER_UNKNOWN: ErrorInfo(_BCI, "Sign a RenewalReq with the current certificate this CA issued (and its key), or enroll anew with PKCSReq and a challenge."),
    ErrorCode.RENEWAL_NOT_ALLOWED: ErrorInfo(_BR, "The template does not allow renewal: enroll anew with a challenge, or set renewal = true in the template."),
    ErrorCode.RENEWAL_TOO_EARLY: ErrorInfo(_BR, "Renew within the template's renewal_window_days before expiry."),
    ErrorCode.RENEWAL_SUBJECT_MISMATCH: ErrorInfo(_BR, "A renewal must request the same subject as the certificate being renewed."),
    ErrorCode.RENEWAL_WIDENS_IDENTITY: ErrorInfo(_BR, "A renewal signed by the old certificate may ask only for its subject, SANs, template, key usage and EKUs; to get more, put a challenge in the request so that the registration point decides."),
    ErrorCode.ISSUED_CERTIFICATE_REVOKED: ErrorInfo(_BCI, "The certificate issued for this request was revoked: enroll anew (a new key, or a request the server has not seen)."),
    ErrorCode.ISSUED_CERTIFICATE_EXPIRED: ErrorInfo(_BCI, "The certificate issued for this request has expired: renew it or enroll anew."),
    ErrorCode.SIGNER_CERTIFICATE_UNKNOWN: ErrorInfo(_BCI, "The signing certificate claims this CA but is not in its records; enroll anew."),
    ErrorCode.SIGNER_CERTIFICATE_REVOKED: ErrorInfo(_BCI, "The signing certificate is revoked; enroll anew with a challenge."),
    ErrorCode.SIGNER_CERTIFICATE_EXPIRED: ErrorInfo(_BCI, "The signing certificate has expired; enroll anew with a challenge."),
    ErrorCode.REQUESTER_NOT_AUTHORIZED: ErrorInfo(_BR, "GetCert and GetCRL are answered only to requests signed by a valid certificate of this CA."),
    ErrorCode.TRANSACTION_UNKNOWN: ErrorInfo(_BCI, "Poll with the transactionID of a request this server has seen; send the PKCSReq again if it was lost."),
    ErrorCode.POLL_SIGNER_MISMATCH: ErrorInfo(_BMC, "Sign the CertPoll with the same key and certificate as the original request."),
    ErrorCode.REQUEST_DENIED: ErrorInfo(_BR, "An administrator denied the request (reason in the text); enroll anew if that was a mistake."),
    ErrorCode.CERTIFICATE_UNKNOWN: ErrorInfo(_BCI, "Ask for a certificate (issuer and serial) this CA issued."),
    ErrorCode.REQUEST_NOT_PENDING: ErrorInfo(_BR, "The request was decided already (by another administrator or server): see 'scepd requests show'."),
    ErrorCode.REVOCATION_REASON_UNKNOWN: ErrorInfo(_BR, "Use an RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, certificateHold, privilegeWithdrawn."),
    ErrorCode.CERTIFICATE_ALREADY_REVOKED: ErrorInfo(_BR, "Nothing to do: the certificate (and its renewals) is revoked already; 'scepd certs show' gives the reason."),
    ErrorCode.CA_NOT_CONFIGURED: ErrorInfo(_BR, "Configure the issuing CA again ([ca] previous_certificates) so that its CRL can be signed."),
    ErrorCode.SIGN_IN_FAILED: ErrorInfo(_BR, "Check the account name and password; after five failed sign-ins an account is locked for 15 minutes, the right password refused alike ('scepd admin list' shows the lock): wait, or have an administrator run 'scepd admin passwd NAME'.", http_status=401),
    ErrorCode.ACCOUNT_LOCKED: ErrorInfo(_BR, "Too many failed sign-ins: wait until the lock ends, or have an administrator run 'scepd admin passwd NAME'.", http_status=429),
    ErrorCode.SESSION_REQUIRED: ErrorInfo(_BR, "Sign in at /admin/login first; sessions end after 30 minutes idle or 12 hours.", http_status=403),
    ErrorCode.CSRF_TOKEN_INVALID: ErrorInfo(_BR, "Submit the console's own form again (reload the page): the form's token is missing or belongs to another session.", http_status=403),
    ErrorCode.ROLE_NOT_ALLOWED: ErrorInfo(_BR, "Ask for an operator account: viewers read, operators approve, deny, revoke and make one-time passwords.", http_status=403),
    ErrorCode.CONSOLE_NEEDS_HTTPS: ErrorInfo(_BR, "Open the console over HTTPS (scepd serve --tls self, or --tls-cert/--tls-key), or from this machine as http://127.0.0.1.", http_status=403),
    ErrorCode.CONSOLE_BUSY: ErrorInfo(_BR, "Sign in again in a few seconds: the console checks only a few passwords at a time (each costs 64 MiB and a CPU for a moment), and that many sign-ins are under way.", http_status=429),
    ErrorCode.ACCOUNT_UNKNOWN: ErrorInfo(_BR, "Name an account 'scepd admin list' shows.", http_status=404),
    ErrorCode.ACCOUNT_EXISTS: ErrorInfo(_BR, "Choose another name, or change this account's password with 'scepd admin passwd NAME'."),
    ErrorCode.ACCOUNT_NAME_INVALID: ErrorInfo(_BR, "Name the account with 1 to 64 printable characters, without leading or trailing spaces."),
    ErrorCode.PASSWORD_TOO_SHORT: ErrorInfo(_BR, "Choose a password of at least 12 characters."),
    ErrorCode.ONE_TIME_PASSWORDS_DISABLED: ErrorInfo(_BR, "Set [challenge] one_time_passwords = true in scepd.toml."),
    ErrorCode.CSR_MALFORMED: ErrorInfo(_BR, "Send a valid PKCS#10 request."),
    ErrorCode.CSR_SIGNATURE_INVALID: ErrorInfo(_BMC, "Sign the PKCS#10 request with the private key of the public key it carries."),
    ErrorCode.KEY_TYPE_NOT_ALLOWED: ErrorInfo(_BA, "Use a key type and curve the template allows (key_types, ec_curves)."),
    ErrorCode.KEY_TOO_WEAK: ErrorInfo(_BR, "Use a larger key, or lower the template's min_rsa_bits for legacy devices."),
    ErrorCode.SUBJECT_INVALID: ErrorInfo(_BR, "Give the request the subject and subjectAltNames its template asks for."),
    ErrorCode.TEMPLATE_MISSING: ErrorInfo(_BR, "The template mapping names a template that does not exist: run 'scepd templates reset-mapping' or define it."),
    ErrorCode.CHALLENGE_PASSWORD_MISSING: ErrorInfo(_BR, "Put the challenge in the request's challengePassword attribute."),
    ErrorCode.CHALLENGE_DECODING_ERROR: ErrorInfo(_BR, "The challenge was damaged on its way: have the MDM issue and push it again, unaltered."),
    ErrorCode.CHALLENGE_DECRYPTION_ERROR: ErrorInfo(_BR, "The challenge was encrypted to another registration point certificate: issue a new one (the encryption pair may have been re-created)."),
    ErrorCode.CHALLENGE_DESERIALIZATION_ERROR: ErrorInfo(_BR, "The MDM wrote claims this registration point cannot read (format in docs/challenges.md); fix the MDM or its audience."),
    ErrorCode.SIGNATURE_VALIDATION_FAILED: ErrorInfo(_BR, "The challenge's signature does not match the trusted signing certificate: the challenge was altered or the MDM's key changed."),
    ErrorCode.SIGNING_CERT_THUMBPRINT_MISMATCH: ErrorInfo(_BR, "Trust the MDM's signing certificate: 'scepd registry trust add mdm.pem' (for scepd's own, 'scepd doctor --fix')."),
    ErrorCode.CHALLENGE_EXPIRED: ErrorInfo(_BR, "Issue a new challenge; check the device and server clocks (lifetime [registration_point] challenge_lifetime)."),
    ErrorCode.CHALLENGE_INVALID_TIMESTAMP: ErrorInfo(_BR, "The challenge's iat/exp are impossible or too far apart: check the MDM's clock and lifetime."),
    ErrorCode.SUBJECT_NAME_MISMATCH: ErrorInfo(_BR, "The device asked for another subject than the MDM expected: align the profile's subject with the challenge."),
    ErrorCode.SUBJECT_NAME_MISSING: ErrorInfo(_BR, "The request has no subject though the challenge expects one: set the subject in the profile."),
    ErrorCode.SUBJECT_ALT_NAME_MISMATCH: ErrorInfo(_BR, "The device asked for other subjectAltNames than the MDM expected: align profile and challenge."),
    ErrorCode.SUBJECT_ALT_NAME_MISSING: ErrorInfo(_BR, "The request has no subjectAltName though the challenge expects some: add them to the profile."),
    ErrorCode.KEY_USAGE_MISMATCH: ErrorInfo(_BR, "The request's key usage differs from the challenge's: align the profile's key usage."),
    ErrorCode.KEY_LENGTH_MISMATCH: ErrorInfo(_BR, "The request's key type or size is not what the challenge expects: align the profile's key size."),
    ErrorCode.ENHANCED_KEY_USAGE_MISMATCH: ErrorInfo(_BR, "The request's extended key usages differ from the challenge's: align profile and challenge."),
    ErrorCode.ENHANCED_KEY_USAGE_MISSING: ErrorInfo(_BR, "The challenge expects extended key usages the request does not ask for: add them to the profile."),
    ErrorCode.BAD_DEVICE_ID_IN_CHALLENGE: ErrorInfo(_BR, "The request must carry the device ID of the challenge as a URI SAN IntuneDeviceId://<id>."),
    ErrorCode.CERTIFICATE_REQUEST_DECODING_FAILED: ErrorInfo(_BR, "Intune could not decode the PKCS#10 request scepd passed on: check the device's SCEP profile (key size, subject variables) and send a new request."),
    ErrorCode.AAD_KEY_IDENTIFIER_LIST_MISSING: ErrorInfo(_BR, "Intune found no Entra key identifiers for the device: re-register the device with Entra ID, then let the profile retry."),
    ErrorCode.REGISTERED_KEY_MISMATCH: ErrorInfo(_BR, "The request's key is not the one Intune registered for this challenge: let the device generate a new key and request again."),
    ErrorCode.SCEP_PROFILE_NO_LONGER_TARGETED: ErrorInfo(_BR, "The SCEP profile is no longer assigned to this device or user: assign it again in Intune, or leave the device without it."),
    ErrorCode.BAD_CERTIFICATE_REQUEST_ID_IN_CHALLENGE: ErrorInfo(_BR, "The challenge names another certificate request than Intune expects: let the device fetch a new challenge (sync the device)."),
    ErrorCode.BAD_USER_ID_IN_CHALLENGE: ErrorInfo(_BR, "The challenge names another user than the one enrolling: check the profile's user assignment and sync the device."),
    ErrorCode.INTUNE_UNKNOWN: ErrorInfo(_BR, "Intune refused with a code it does not explain (or one scepd does not know, given in the text): look the transaction ID up in Intune's certificate reports."),
    ErrorCode.INTUNE_NOTIFICATION_FAILED: ErrorInfo(_BR, "Intune was not told of the signed certificate (successNotification failed), so it was revoked and not delivered: check the log line for Intune's answer; the device retries with a new request."),
    ErrorCode.CHALLENGE_DENIED: ErrorInfo(_BR, "The MDM (its webhook or a remote registration point) refused the request; the text gives its reason."),
    ErrorCode.CHALLENGE_REPLAYED: ErrorInfo(_BR, "A challenge works once: have the MDM issue a new one."),
    ErrorCode.REGISTRATION_POINT_KEY_MISSING: ErrorInfo(_BR, "The registration point's encryption pair is missing: 'scepd doctor --fix' or restart 'scepd serve' re-creates it; then issue new challenges.", http_status=503),
    ErrorCode.REGISTRATION_POINT_UNAVAILABLE: ErrorInfo(_BR, "The remote registration point did not answer: check [challenge] remote_url and its token; no certificate is issued without a verdict."),
    ErrorCode.CHALLENGE_PASSWORD_INCORRECT: ErrorInfo(_BR, "Use the static challenge from scepd.toml or a fresh one from 'scepd otp new'."),
    ErrorCode.ONE_TIME_PASSWORD_EXPIRED: ErrorInfo(_BR, "Get a fresh password with 'scepd otp new'."),
    ErrorCode.ONE_TIME_PASSWORD_USED: ErrorInfo(_BR, "One-time passwords work once; get a fresh one with 'scepd otp new'."),
    # A signed FAILURE, not HTTP 503: every SCEP client reads a CertRep and shows its text,
    # while a 503 reaches most as a bare transport error; devices and MDMs retry on their own.
    ErrorCode.STORE_UNAVAILABLE: ErrorInfo(_BR, "Transient: send the request again later. The database was locked past [database] busy_timeout, full or unreachable; if it persists, check free disk space, processes holding the database (backups, sqlite3 sessions) or the database server.", http_status=503),
    # A token-held key (PKCS#11) that cannot be used now: where a CertRep can still be signed
    # (the RA key elsewhere) a signed FAILURE, else HTTP 503.
    ErrorCode.KEY_UNAVAILABLE: ErrorInfo(_BR, "The HSM holding this key did not answer (token removed, module failed, session lost): run 'scepd doctor', which checks the module, the token, the PIN and each key object; scepd reconnects by itself once the token is back, so clients need only retry.", http_status=503),
    ErrorCode.INTERNAL_ERROR: ErrorInfo(_BR, "A bug in scepd: the log line with this transaction ID has the traceback; please report it."),
}


@dataclass(frozen=True)
class Refusal:
    """A request refused for a stated reason: the value that becomes a FAILURE or a 4xx."""

    code: ErrorCode
    reason: str

    @property
    def fail_info(self) -> FailInfo:
        return ERRORS[self.code].fail_info

    @property
    def http_status(self) -> int:
        return ERRORS[self.code].http_status

    @property
    def remedy(self) -> str:
        return ERRORS[self.code].remedy

    @property
    def fail_info_text(self) -> str:
        # One line: the code first so that admins can grep for it, then what to do.
        return f"{self.code.value}: {self.reason}"

    @property
    def http_text(self) -> str:
        """The body of an HTTP 4xx: the failInfoText and the remedy."""
        return f"{self.fail_info_text}\nRemedy: {self.remedy}\n"


class ProtocolError(Exception):
    """Something a peer sent that the protocol cannot accept, raised where it is found and
    caught where the message is opened (`open_request`), which hands it up as a `Refusal`
    (`refusal_from_protocol`).

    `code` names it (its failInfo comes from the table); `reason` is a sentence a human can
    act on."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    @property
    def fail_info(self) -> FailInfo:
        return ERRORS[self.code].fail_info


def refusal_from_protocol(exc: ProtocolError) -> Refusal:
    """The refusal a ProtocolError stands for, as a value to hand up."""
    return Refusal(exc.code, exc.reason)


def undecodable(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MESSAGE_UNDECODABLE, what)


def unsupported(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, f"{what} is not supported")


# Every way an envelope fails to open once it is read (a wrong key, bad RSA padding, a
# content key of the wrong length, corrupt ciphertext, bad content padding) ends in these
# words: which step failed is what a padding-oracle attack needs to know.
DECRYPTION_FAILED = "the encrypted content does not decrypt (wrong key, corrupt data or bad padding)"


class KeyUnavailable(ProtocolError):
    """One of our own keys cannot be used now (a PKCS#11 token gone, its module failing): not
    the peer's fault, but raised where the key is used, which may be inside `open_request`,
    so it is a ProtocolError that every layer already hands up as a refusal."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.KEY_UNAVAILABLE, reason)


def decryption_failed() -> ProtocolError:
    return ProtocolError(ErrorCode.DECRYPTION_FAILED, DECRYPTION_FAILED)


def markdown() -> str:
    """docs/errors.md, generated: `python -m scepd.protocol.errors > docs/errors.md`."""
    lines = [
        "# Error codes",
        "",
        "Every refused request carries one of these codes: the first word of the CertRep's",
        "failInfoText, `code` in the JSON log line, and the first line of an HTTP 4xx body.",
        "The codes are stable. Generated by `python -m scepd.protocol.errors > docs/errors.md`.",
        "",
        "| code | failInfo | HTTP | remedy |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{code.value}` | {info.fail_info.rfc_name} | {info.http_status} | {info.remedy} |" for code, info in ERRORS.items()
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
