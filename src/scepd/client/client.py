"""A SCEP client: fetch the CA, build a PKCSReq, send it, check and open the CertRep."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import AttributeOID

from scepd.protocol import MessageType, PkiStatus
from scepd.protocol.caps import parse_caps
from scepd.protocol.enveloped import ContentCipher, build_enveloped, decrypt_enveloped
from scepd.protocol.message import (
    build_pki_message,
    encode_issuer_and_serial,
    encode_issuer_and_subject,
    new_nonce,
    parse_pki_message,
)
from scepd.protocol.signed import parse_certs_and_crls, parse_certs_only
from scepd.protocol.types import FailInfo

CIPHERS = {
    "aes": ContentCipher.AES_128_CBC,  # what the GetCACaps keyword "AES" means (RFC 8894)
    "aes128": ContentCipher.AES_128_CBC,
    "aes192": ContentCipher.AES_192_CBC,
    "aes256": ContentCipher.AES_256_CBC,
    "aes-gcm": ContentCipher.AES_128_GCM,
    "des3": ContentCipher.DES_EDE3_CBC,
    "des": ContentCipher.DES_CBC,
}


class ScepClientError(Exception):
    pass


def build_csr(
    key,
    subject: x509.Name,
    *,
    sans: list[x509.GeneralName] = (),
    challenge: str | None = None,
    key_usage: x509.KeyUsage | None = None,
    extended_key_usage: list[x509.ObjectIdentifier] = (),
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if extended_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if challenge:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode("utf-8"))
    return builder.sign(key, hashes.SHA256())


def self_signed(key, subject: x509.Name) -> x509.Certificate:
    """The transient signer certificate a client signs its first request with.

    It and the PKCS#10 request are always signed with SHA-256 (cryptography no longer makes
    SHA-1 X.509 signatures); the `digest` of an enrollment is the CMS one, which is what
    GetCACaps SHA-1/SHA-256/SHA-512 is about."""
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class CaCertificates:
    ca: x509.Certificate
    ra: x509.Certificate  # the CA itself when the server has no RA
    all: tuple[x509.Certificate, ...]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _encrypts(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    except x509.ExtensionNotFound:
        return True


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # InvalidSignature, ValueError, TypeError: not this issuer
        return False


def pick_ca_and_ra(certs: list[x509.Certificate]) -> CaCertificates:
    """Find the RA and the issuing CA among GetCACert's certificates.

    The certificates of a SignedData are a SET, which DER sorts, so their order means
    nothing: the RA is the non-CA certificate that can be encrypted to, and the issuing CA
    is the one that signed it (during a CA rollover several CAs are offered). Without an
    RA, the newest CA is both.
    """
    if not certs:
        raise ScepClientError("GetCACert returned no certificates")
    cas = sorted((c for c in certs if _is_ca(c)), key=lambda c: c.not_valid_before_utc, reverse=True)
    ras = [c for c in certs if not _is_ca(c) and _encrypts(c)]
    if not cas:
        return CaCertificates(ras[0] if ras else certs[0], ras[0] if ras else certs[0], tuple(certs))
    for ra in ras:
        issuer = next((ca for ca in cas if _signed_by(ra, ca)), None)
        if issuer is not None:
            return CaCertificates(issuer, ra, tuple(certs))
    return CaCertificates(cas[0], cas[0], tuple(certs))


@dataclass(frozen=True)
class EnrollmentResult:
    status: PkiStatus
    transaction_id: str
    certificate: x509.Certificate | None = None
    fail_info: FailInfo | None = None
    fail_info_text: str | None = None


class ScepClient:
    def __init__(self, url: str, *, timeout: float = 30.0, http: httpx.Client | None = None,
                 ca_bundle: str | Path | None = None) -> None:
        """`ca_bundle`: the PEM certificates an https:// server's certificate must chain to,
        in place of the system's (as curl's --cacert), e.g. the ca.pem of a scepd with
        [server] tls = "self"."""
        self.url = url
        if http is None:
            verify = ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else True
            http = httpx.Client(timeout=timeout, verify=verify)
        self.http = http

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "ScepClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self, operation: str, message: str | None = None) -> httpx.Response:
        params = f"operation={operation}"
        if message is not None:
            params += f"&message={quote(message, safe='')}"
        response = self.http.get(f"{self.url}?{params}")
        if response.status_code != 200:
            raise ScepClientError(f"{operation}: HTTP {response.status_code}: {response.text.strip()[:300]}")
        return response

    def get_ca_caps(self) -> frozenset[str]:
        return parse_caps(self._get("GetCACaps").content)

    def get_ca_certs(self) -> CaCertificates:
        response = self._get("GetCACert")
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if content_type == "application/x-x509-ca-cert":
            certs = [x509.load_der_x509_certificate(response.content)]
        else:
            certs = parse_certs_only(response.content)
        return pick_ca_and_ra(certs)

    def enroll(
        self,
        key,
        subject: x509.Name,
        *,
        sans: list[x509.GeneralName] = (),
        challenge: str | None = None,
        cipher: str = "aes",
        digest: str = "sha256",
        use_get: bool = False,
        ca: CaCertificates | None = None,
        transaction_id: str | None = None,
        signer: tuple[x509.Certificate, object] | None = None,
        renewal: bool = False,
        key_usage: x509.KeyUsage | None = None,
        extended_key_usage: list[x509.ObjectIdentifier] = (),
        poll_interval: float = 0,
        max_poll_time: float = 0,
    ) -> EnrollmentResult:
        """Send a PKCSReq (or, with `renewal`, a RenewalReq) for `key`; poll while PENDING.

        Without `signer` the request is signed with a self-signed certificate of the device
        key when that key is RSA, or of a transient RSA key for an EC key: the reply is
        encrypted back to the signer, and many servers can encrypt only to RSA (RSA key
        transport). To renew, pass the current certificate and its key as `signer`; an EC
        signer works with a server that answers it by ECDH key agreement (RFC 5753), as
        scepd does, and the reply is opened with that EC key. With `poll_interval` > 0 a PENDING
        answer is followed by CertPolls until it resolves or `max_poll_time` (0: no limit)
        runs out.
        """
        ca = ca or self.get_ca_certs()
        csr = build_csr(
            key, subject, sans=list(sans), challenge=challenge, key_usage=key_usage, extended_key_usage=extended_key_usage
        )
        if signer is None:
            signer_key = key if isinstance(key, rsa.RSAPrivateKey) else rsa.generate_private_key(65537, 2048)
            signer = (self_signed(signer_key, subject), signer_key)
        # A fresh random ID per enrollment (Apple sends 40 hex characters too); a resend of
        # the same request passes its transaction_id again.
        transaction_id = transaction_id or secrets.token_hex(20).upper()
        exchange = _Exchange(self, ca, signer, CIPHERS[cipher], digest, use_get, transaction_id)
        message_type = MessageType.RENEWAL_REQ if renewal else MessageType.PKCS_REQ
        result = exchange.certificate_for(key, exchange.send(message_type, csr.public_bytes(Encoding.DER)))
        deadline = time.monotonic() + max_poll_time if max_poll_time else None
        while result.status is PkiStatus.PENDING and poll_interval > 0:
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                break
            time.sleep(poll_interval)
            poll = encode_issuer_and_subject(ca.ca.subject, subject)
            result = exchange.certificate_for(key, exchange.send(MessageType.CERT_POLL, poll))
        return result

    def get_cert(self, issuer: x509.Name, serial: int, signer, *, ca: CaCertificates | None = None) -> x509.Certificate:
        """GetCert: a certificate by issuer and serial (the server wants a signer it issued)."""
        reply = self._retrieve(MessageType.GET_CERT, issuer, serial, signer, ca)
        return reply[0][0]

    def get_crl(self, issuer: x509.Name, serial: int, signer, *, ca: CaCertificates | None = None) -> x509.CertificateRevocationList:
        """GetCRL: the CRL covering the certificate `issuer`/`serial`."""
        return self._retrieve(MessageType.GET_CRL, issuer, serial, signer, ca)[1][0]

    def _retrieve(self, message_type, issuer, serial, signer, ca):
        ca = ca or self.get_ca_certs()
        exchange = _Exchange(self, ca, signer, ContentCipher.AES_128_CBC, "sha256", False, secrets.token_hex(20).upper())
        reply = exchange.send(message_type, encode_issuer_and_serial(issuer, serial))
        if reply.pki_status is not PkiStatus.SUCCESS:
            raise ScepClientError(f"{message_type.name} refused: {reply.fail_info_text or reply.pki_status}")
        return parse_certs_and_crls(exchange.open(reply))

    def _post(self, request: bytes) -> bytes:
        response = self.http.post(
            f"{self.url}?operation=PKIOperation",
            content=request,
            headers={"Content-Type": "application/x-pki-message"},
        )
        if response.status_code != 200:
            raise ScepClientError(f"PKIOperation: HTTP {response.status_code}: {response.text.strip()[:300]}")
        return response.content


@dataclass
class _Exchange:
    """One transaction with the server: same signer, cipher and transactionID throughout."""

    client: ScepClient
    ca: CaCertificates
    signer: tuple[x509.Certificate, object]
    cipher: ContentCipher
    digest: str
    use_get: bool
    transaction_id: str

    def send(self, message_type: MessageType, content: bytes):
        signer_cert, signer_key = self.signer
        nonce = new_nonce()
        request = build_pki_message(
            message_type=message_type,
            transaction_id=self.transaction_id,
            signer_certificate=signer_cert,
            signer_key=signer_key,
            digest_algorithm=self.digest,
            envelope=build_enveloped(content, self.ca.ra, self.cipher),
            sender_nonce=nonce,
        )
        if self.use_get:
            body = self.client._get("PKIOperation", base64.b64encode(request).decode("ascii")).content
        else:
            body = self.client._post(request)
        reply = parse_pki_message(body, self.ca.all)
        if reply.signature_error:
            raise ScepClientError(f"the CertRep does not verify: {reply.signature_error}")
        if reply.signer_certificate not in self.ca.all:
            raise ScepClientError("the CertRep is not signed by the CA or RA from GetCACert")
        if reply.message_type is not MessageType.CERT_REP:
            raise ScepClientError(f"expected a CertRep, got {reply.message_type.name}")
        if reply.transaction_id != self.transaction_id or reply.recipient_nonce != nonce:
            raise ScepClientError("the CertRep answers another request (transactionID or recipientNonce differ)")
        return reply

    def open(self, reply) -> bytes:
        return decrypt_enveloped(reply.envelope, [self.signer]).content

    def certificate_for(self, key, reply) -> EnrollmentResult:
        if reply.pki_status is not PkiStatus.SUCCESS:
            return EnrollmentResult(
                reply.pki_status or PkiStatus.FAILURE, self.transaction_id, None, reply.fail_info, reply.fail_info_text
            )
        wanted = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        for cert in parse_certs_only(self.open(reply)):
            if cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == wanted:
                return EnrollmentResult(PkiStatus.SUCCESS, self.transaction_id, cert)
        raise ScepClientError("the CertRep holds no certificate for our key")


__all__ = ["CIPHERS", "CaCertificates", "EnrollmentResult", "ScepClient", "ScepClientError"]
