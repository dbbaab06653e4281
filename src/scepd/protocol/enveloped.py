"""EnvelopedData and AuthEnvelopedData (RFC 5652 section 6, RFC 5083/5084): open a peer's
pkcsPKIEnvelope with one of our keys, seal a reply to the peer's certificate.

The content key reaches an RSA recipient by key transport (PKCS #1 v1.5 or OAEP), an EC one
by key agreement (`agreement`). cryptography's PKCS7EnvelopeBuilder seals what it can (AES-CBC
with PKCS #1 v1.5: nearly every reply), in a tenth of the time of building it here.
May import: asn1crypto, cryptography and scepd.protocol's agreement, ber, certificates,
errors, signatures.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import os
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from scepd.protocol import ber, signatures
from scepd.protocol.agreement import (
    Agreement,
    agreed_key,
    agreement_of,
    key_agree_recipient_info,
)
from scepd.protocol.certificates import issuer_and_serial, known_asn1, names_certificate
from scepd.protocol.errors import (
    ErrorCode,
    ProtocolError,
    decryption_failed,
    unsupported,
)


class _GCMParameters(core.Sequence):
    """RFC 5084 GCMParameters, which asn1crypto does not define."""

    _fields = [
        ("aes_nonce", core.OctetString),
        ("aes_icvlen", core.Integer, {"default": 12}),
    ]


for _name in ("aes128_gcm", "aes192_gcm", "aes256_gcm"):
    algos.EncryptionAlgorithm._oid_specs[_name] = _GCMParameters


class ContentCipher(enum.Enum):
    """Content-encryption algorithms, by asn1crypto's names for their OIDs."""

    DES_CBC = "des"
    DES_EDE3_CBC = "tripledes_3key"
    AES_128_CBC = "aes128_cbc"
    AES_192_CBC = "aes192_cbc"
    AES_256_CBC = "aes256_cbc"
    AES_128_GCM = "aes128_gcm"
    AES_192_GCM = "aes192_gcm"
    AES_256_GCM = "aes256_gcm"

    @property
    def key_size(self) -> int:
        return {
            "des": 8,
            "tripledes_3key": 24,
            "aes128_cbc": 16,
            "aes192_cbc": 24,
            "aes256_cbc": 32,
            "aes128_gcm": 16,
            "aes192_gcm": 24,
            "aes256_gcm": 32,
        }[self.value]

    @property
    def is_gcm(self) -> bool:
        return self.value.endswith("_gcm")

    def _block_cipher(self, key: bytes):
        if self in (ContentCipher.DES_CBC, ContentCipher.DES_EDE3_CBC):
            # DES-EDE3 with K1 = K2 = K3 is single DES.
            return TripleDES(key * 3 if len(key) == 8 else key)
        return algorithms.AES(key)


@dataclass(frozen=True)
class KeyTransport:
    """How the content-encryption key is wrapped for an RSA recipient."""

    scheme: str = "rsaes_pkcs1v15"  # or "rsaes_oaep"
    oaep_hash: str = "sha1"

    def _padding(self):
        if self.scheme == "rsaes_oaep":
            h = signatures.hash_algorithm(self.oaep_hash)
            return asym_padding.OAEP(mgf=asym_padding.MGF1(h), algorithm=h, label=None)
        return asym_padding.PKCS1v15()

    def _algorithm_id(self) -> dict:
        if self.scheme == "rsaes_oaep":
            params = {
                "hash_algorithm": {"algorithm": self.oaep_hash},
                "mask_gen_algorithm": {
                    "algorithm": "mgf1",
                    "parameters": {"algorithm": self.oaep_hash},
                },
            }
            return {"algorithm": "rsaes_oaep", "parameters": params}
        return {"algorithm": "rsaes_pkcs1v15"}


PKCS1V15 = KeyTransport()


@dataclass(frozen=True)
class Decrypted:
    content: bytes
    cipher: ContentCipher
    # How the content key came: by RSA key transport, or None when it was agreed by ECDH
    # (a reply to an RSA certificate then uses PKCS #1 v1.5).
    key_transport: KeyTransport | None
    recipient: x509.Certificate


def _key_transport_of(algorithm: cms.KeyEncryptionAlgorithm) -> KeyTransport:
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return PKCS1V15
    if name == "rsaes_oaep":
        params = algorithm["parameters"]
        hash_name = params["hash_algorithm"]["algorithm"].native if params else "sha1"
        transport = KeyTransport("rsaes_oaep", hash_name)
        transport._padding()  # an OAEP hash we do not know is refused here, as badAlg
        return transport
    raise unsupported(f"key transport {name}")


@dataclass(frozen=True)
class _Sealed:
    """An envelope's parts for one of our recipients, read and not yet decrypted."""

    cipher: ContentCipher
    iv: bytes  # the CBC IV or the GCM nonce
    tag: bytes | None  # GCM's
    ciphertext: bytes
    certificate: x509.Certificate
    key: object
    encrypted_key: bytes
    transport: KeyTransport | None  # for a KeyTransRecipientInfo
    agreement: Agreement | None  # for a KeyAgreeRecipientInfo


def decrypt_enveloped(der: bytes, recipients: list[tuple[x509.Certificate, object]]) -> Decrypted:
    """Decrypt an EnvelopedData (or AuthEnvelopedData, for AES-GCM) with one of `recipients`.

    `recipients` are (certificate, private key) pairs: RSA ones open a KeyTransRecipientInfo,
    EC ones a KeyAgreeRecipientInfo; the first RecipientInfo naming one of them is used. A
    message addressed to none of them is refused with badMessageCheck.
    """
    sealed = ber.with_rewriting(der, lambda data: _read_envelope(data, recipients))
    cek = _content_key(sealed)
    return Decrypted(_decrypt_content(sealed, cek), sealed.cipher, sealed.transport, sealed.certificate)


def _read_envelope(der: bytes, recipients) -> _Sealed:
    """Everything decryption needs, read from the envelope (where asn1crypto reads it)."""
    content_type, envelope = ber.load_content(der, "enveloped_data", "authenticated_enveloped_data")
    with ber.decoding("the encrypted part cannot be read"):
        if content_type == "enveloped_data":
            eci = envelope["encrypted_content_info"]
        else:
            eci = envelope["auth_encrypted_content_info"]
        info, certificate, key, recipient_key = _our_recipient(envelope["recipient_infos"], recipients)
        algorithm = eci["content_encryption_algorithm"]
        try:
            cipher = ContentCipher(algorithm["algorithm"].native)
        except ValueError:
            raise unsupported(f"content encryption {algorithm['algorithm'].native}") from None
        ciphertext = eci["encrypted_content"].native or b""
        tag = None
        if cipher.is_gcm:
            params = algorithm["parameters"]
            iv = params["aes_nonce"].native
            tag = envelope["mac"].native if content_type == "authenticated_enveloped_data" else None
            if tag is None:  # GCM inside plain EnvelopedData: the tag trails the ciphertext
                icv = params["aes_icvlen"].native
                ciphertext, tag = ciphertext[:-icv], ciphertext[-icv:]
        else:
            iv = algorithm["parameters"].native
        if info.name == "ktri":
            transport = _key_transport_of(info.chosen["key_encryption_algorithm"])
            return _Sealed(cipher, iv, tag, ciphertext, certificate, key, info.chosen["encrypted_key"].native,
                           transport, None)
        agreement = agreement_of(info.chosen)
        return _Sealed(cipher, iv, tag, ciphertext, certificate, key, recipient_key["encrypted_key"].native,
                       None, agreement)


def _our_recipient(recipient_infos, recipients):
    """(RecipientInfo, certificate, key, RecipientEncryptedKey or None) of the first
    RecipientInfo naming one of `recipients`."""
    ours = [(known_asn1(c), c, k) for c, k in recipients]
    for info in recipient_infos:
        if info.name == "ktri":
            for asn1_cert, cert, key in ours:
                if names_certificate(asn1_cert, info.chosen["rid"]):
                    return info, cert, key, None
        elif info.name == "kari":
            for recipient_key in info.chosen["recipient_encrypted_keys"]:
                for asn1_cert, cert, key in ours:
                    if names_certificate(asn1_cert, recipient_key["rid"]):
                        return info, cert, key, recipient_key
    raise ProtocolError(
        ErrorCode.RECIPIENT_UNKNOWN,
        "the request is encrypted to a certificate this server does not hold; "
        "fetch the current RA certificate with GetCACert",
    )


def _content_key(sealed: _Sealed) -> bytes:
    key, size = sealed.key, sealed.cipher.key_size
    if sealed.agreement is not None:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise decryption_failed()
        return agreed_key(sealed.agreement, key, sealed.encrypted_key, size)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise decryption_failed()
    try:
        cek = key.decrypt(sealed.encrypted_key, sealed.transport._padding())
    except ValueError:
        cek = b""
    if len(cek) != size:
        # Implicit rejection (against Bleichenbacher's attack), whatever the OpenSSL build does
        # itself: a key that does not decrypt, or is not the cipher's length, is replaced by a
        # substitute, so that the failure shows where corrupt content fails, the same way.
        cek = rejection_key(sealed.encrypted_key, size)
    return cek


# Secret to this process: the substitute keys of implicit rejection cannot be predicted.
_REJECTION_SECRET = os.urandom(32)


def rejection_key(encrypted_key: bytes, size: int) -> bytes:
    """The content key that stands in for one that does not decrypt: derived from the
    encrypted key (as OpenSSL 3.2 derives its own), not drawn afresh, so that the same bad
    request fails the same way every time it is sent. A fresh random key would let CBC
    padding pass by chance once in 256 tries for a bad key only, which repeating one request
    would tell apart from a good one."""
    return hmac.new(_REJECTION_SECRET, encrypted_key, hashlib.sha256).digest()[:size]


def _decrypt_content(sealed: _Sealed, cek: bytes) -> bytes:
    try:
        if sealed.cipher.is_gcm:
            mode = modes.GCM(sealed.iv, sealed.tag, min_tag_length=len(sealed.tag))
            decryptor = Cipher(algorithms.AES(cek), mode).decryptor()
            return decryptor.update(sealed.ciphertext) + decryptor.finalize()
        decryptor = Cipher(sealed.cipher._block_cipher(cek), modes.CBC(sealed.iv)).decryptor()
        padded = decryptor.update(sealed.ciphertext) + decryptor.finalize()
        unpadder = padding.PKCS7(len(sealed.iv) * 8).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except Exception:  # ValueError, InvalidTag, a TypeError for a missing IV: all the same to the peer
        raise decryption_failed() from None


# What cryptography's PKCS7EnvelopeBuilder can seal (with PKCS #1 v1.5 key transport only):
# the ciphers nearly every client asks for. DES, 3DES, AES-192, GCM, OAEP and every EC
# recipient are built here.
_LIBRARY_CIPHERS = {ContentCipher.AES_128_CBC: algorithms.AES128, ContentCipher.AES_256_CBC: algorithms.AES256}


def build_enveloped(
    content: bytes,
    recipient: x509.Certificate,
    cipher: ContentCipher,
    key_transport: KeyTransport | None = PKCS1V15,
) -> bytes:
    """Encrypt `content` to `recipient`: by RSA key transport (`key_transport`, PKCS #1 v1.5
    when None) to an RSA certificate, by ephemeral-static ECDH (RFC 5753) to an EC one. AES-GCM
    produces an AuthEnvelopedData (RFC 5083/5084); every other cipher an EnvelopedData."""
    key_transport = key_transport or PKCS1V15
    public_key = recipient.public_key()
    cek = os.urandom(cipher.key_size)
    if isinstance(public_key, rsa.RSAPublicKey):
        library_cipher = _LIBRARY_CIPHERS.get(cipher)
        if library_cipher is not None and key_transport == PKCS1V15:
            builder = pkcs7.PKCS7EnvelopeBuilder().set_data(content).add_recipient(recipient)
            # Binary: the content is DER, not text for S/MIME's line-ending canonicalisation.
            return builder.set_content_encryption_algorithm(library_cipher).encrypt(
                Encoding.DER, [pkcs7.PKCS7Options.Binary]
            )
        recipient_info = _ktri(cek, recipient, public_key, key_transport)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        recipient_info = key_agree_recipient_info(cek, recipient)
    else:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_ALGORITHM,
            f"nothing can be encrypted to a {type(public_key).__name__}: the signer's key must be RSA or EC",
        )
    recipient_infos = ber.frozen(cms.RecipientInfos([recipient_info]))
    if cipher.is_gcm:
        return _sealed_gcm(content, cipher, cek, recipient_infos)
    # RFC 5652 6.1: version 0 when every RecipientInfo is a version 0 one (ktri), else 2.
    return _sealed_cbc(content, cipher, cek, recipient_infos, "v0" if recipient_info.name == "ktri" else "v2")


def _sealed_gcm(content: bytes, cipher: ContentCipher, cek: bytes, recipient_infos: cms.RecipientInfos) -> bytes:
    """An AuthEnvelopedData (RFC 5083/5084): the GCM tag is its mac."""
    nonce = os.urandom(12)
    encryptor = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
    ciphertext = encryptor.update(content) + encryptor.finalize()
    envelope = {
        "version": "v0",
        "recipient_infos": recipient_infos,
        "auth_encrypted_content_info": ber.frozen(cms.EncryptedContentInfo({
            "content_type": "data",
            "content_encryption_algorithm": {
                "algorithm": cipher.value,
                "parameters": {"aes_nonce": nonce, "aes_icvlen": 16},
            },
            "encrypted_content": ciphertext,
        })),
        "mac": encryptor.tag,
    }
    return cms.ContentInfo({"content_type": "authenticated_enveloped_data", "content": envelope}).dump()


def _sealed_cbc(content: bytes, cipher: ContentCipher, cek: bytes, recipient_infos: cms.RecipientInfos,
                version: str) -> bytes:
    block = 8 if cipher in (ContentCipher.DES_CBC, ContentCipher.DES_EDE3_CBC) else 16
    iv = os.urandom(block)
    padder = padding.PKCS7(block * 8).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(cipher._block_cipher(cek), modes.CBC(iv)).encryptor()
    envelope = {
        "version": version,
        "recipient_infos": recipient_infos,
        "encrypted_content_info": ber.frozen(cms.EncryptedContentInfo({
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": cipher.value, "parameters": iv},
            "encrypted_content": encryptor.update(padded) + encryptor.finalize(),
        })),
    }
    return cms.ContentInfo({"content_type": "enveloped_data", "content": envelope}).dump()


def _ktri(cek: bytes, recipient: x509.Certificate, public_key: rsa.RSAPublicKey, key_transport: KeyTransport):
    # Built bottom-up from frozen parts (see ber.frozen).
    ktri = ber.frozen(cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": ber.frozen(issuer_and_serial(recipient, cms.RecipientIdentifier)),
            "key_encryption_algorithm": _key_transport_id(key_transport),
            "encrypted_key": public_key.encrypt(cek, key_transport._padding()),
        }
    ))
    return cms.RecipientInfo(name="ktri", value=ktri)


@functools.lru_cache(maxsize=16)
def _key_transport_id(key_transport: KeyTransport) -> cms.KeyEncryptionAlgorithm:
    return ber.frozen(cms.KeyEncryptionAlgorithm(key_transport._algorithm_id()))
