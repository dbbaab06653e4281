"""CMS (RFC 5652) as SCEP uses it: SignedData, EnvelopedData, AuthEnvelopedData, certs-only.

asn1crypto holds the structures (it reads BER, indefinite lengths included, and writes DER);
cryptography does every cryptographic operation, and writes whole the two structures its
PKCS #7 module can (a certs-only SignedData; an EnvelopedData with AES-CBC and PKCS #1 v1.5
key transport): in Rust they cost a tenth of building them here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import os
from dataclasses import dataclass, field

from asn1crypto import algos, cms, core
from asn1crypto import crl as asn1_crl
from asn1crypto import parser as asn1_parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from scepd.protocol import signatures
from scepd.protocol.types import FailInfo, ProtocolError


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


def _undecodable(what: str, exc: Exception | None = None) -> ProtocolError:
    detail = f": {exc}" if exc else ""
    return ProtocolError(FailInfo.BAD_REQUEST, "MessageUndecodable", f"{what}{detail}")


def _to_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))


def _to_cryptography(cert: asn1_x509.Certificate) -> x509.Certificate:
    return x509.load_der_x509_certificate(cert.dump())


@functools.lru_cache(maxsize=64)
def _known_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    """asn1crypto's view of one of our own certificates (the CA and RA), parsed once: they
    are looked up in every message.

    The value is shared by the server's threads, and asn1crypto parses lazily, filling a
    list of children as it goes: a second thread reading the same part meanwhile can find
    the list half built. So what `_names_certificate` reads is parsed here, before the value
    is shared; afterwards it is only read."""
    asn1 = _to_asn1(cert)
    _ = asn1.serial_number, asn1.issuer.dump()
    # A part that cannot be read (an odd name string, a malformed extension) still fails
    # where it is read, inside the caller's _decoding, as it did before this warm-up.
    with contextlib.suppress(Exception):
        _ = asn1.issuer == asn1.issuer  # parses what the normalising comparison reads
    with contextlib.suppress(Exception):
        _ = asn1.key_identifier
    return asn1


def _frozen(value: core.Asn1Value, **tagging) -> core.Asn1Value:
    """`value` as parsed from its own encoding. asn1crypto encodes a value built from Python
    values again (with everything built inside it) whenever its contents are read, and the
    parent it is put into reads them at once, then again at every level up; a parsed value
    hands out the bytes it holds. Building a structure bottom-up from frozen parts makes it
    cost one encoding instead of one per level.

    Frozen values are also what the cached parts below are, shared by threads: embedding one
    reads its bytes and never its children (its first dump parses a CHOICE's alternative,
    done here), so threads never parse the same part at once."""
    frozen = type(value).load(value.dump(), **tagging)
    frozen.dump()
    return frozen


def load_content(der: bytes, *expected: str) -> tuple[str, core.Asn1Value]:
    """Parse a ContentInfo whose type is one of `expected`; return (type, content).
    Any decoding problem is a ProtocolError."""
    with _decoding(f"not a CMS {' or '.join(expected)}"):
        info = cms.ContentInfo.load(der)
        content_type = info["content_type"].native
        content = info["content"]
    if content_type not in expected:
        raise _undecodable(f"expected CMS {' or '.join(expected)}, got {content_type}")
    return content_type, content


@contextlib.contextmanager
def _decoding(what: str):
    """asn1crypto parses lazily, so a malformed part raises (ValueError, TypeError and
    others) only when it is reached: every read of a peer's structure happens in here and
    ends as a ProtocolError, never as a crash."""
    try:
        yield
    except ProtocolError:
        raise
    except Exception as exc:
        raise _undecodable(what, exc) from None


# --- SignedData -------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedMessage:
    """A parsed SignedData with one signer.

    `signature_error` is None when the signature (and messageDigest) verified against
    `signer_certificate`; otherwise it says why not. Attributes are returned either way, so
    that a FAILURE can still be addressed to the sender.
    """

    content: bytes
    content_type: str
    digest_algorithm: str
    signer_certificate: x509.Certificate | None
    signed_attributes: dict[str, list] = field(repr=False)
    certificates: tuple[x509.Certificate, ...] = ()
    signature_error: str | None = None

    def attribute(self, name: str):
        values = self.signed_attributes.get(name)
        return values[0] if values else None


def _names_certificate(cert: asn1_x509.Certificate, identifier) -> bool:
    """Does a SignerIdentifier or RecipientIdentifier name this certificate?"""
    if identifier.name == "issuer_and_serial_number":
        ias = identifier.chosen
        # The serial first: an integer comparison rules out almost every other certificate.
        # Then the issuer's encoding, which is almost always copied from the certificate;
        # only when the bytes differ, asn1crypto's (normalising, slow) comparison of names.
        if cert.serial_number != ias["serial_number"].native:
            return False
        issuer = ias["issuer"]
        return cert.issuer.dump() == issuer.dump() or cert.issuer == issuer
    return cert.key_identifier == identifier.chosen.native


def parse_signed_data(der: bytes, known_certificates: tuple[x509.Certificate, ...] = ()) -> SignedMessage:
    """Parse and verify a SignedData with exactly one SignerInfo.

    The signer's certificate is looked up among the certificates the message carries and then
    among `known_certificates` (NDES, for one, sends a CertRep without certificates).
    """
    _, signed_data = load_content(der, "signed_data")
    with _decoding("the SignedData cannot be read"):
        infos = signed_data["signer_infos"]
        if len(infos) != 1:
            raise _undecodable(f"expected one SignerInfo, found {len(infos)}")
        signer = infos[0]

        carried = [c.chosen for c in (signed_data["certificates"] or []) if c.name == "certificate"]
        certificates = tuple(_to_cryptography(c) for c in carried)
        candidates = list(zip(carried, certificates, strict=True)) + [(_known_asn1(c), c) for c in known_certificates]
        sid = signer["sid"]
        signer_cert = next((cert for asn1, cert in candidates if _names_certificate(asn1, sid)), None)

        encap = signed_data["encap_content_info"]
        content = encap["content"].native if encap["content"] else b""
        if isinstance(content, core.Asn1Value):  # a parsable content type other than data
            content = content.dump()
        content = content or b""

        attributes: dict[str, list] = {}
        signed_attrs = signer["signed_attrs"]
        for attr in signed_attrs or []:
            name = attr["type"].native
            attributes[name] = [v.native if isinstance(v, core.Asn1Value) else v for v in attr["values"]]
        digest_name = signer["digest_algorithm"]["algorithm"].native

    with _decoding("the SignerInfo cannot be checked"):
        if signer_cert is None:
            error = "the signer's certificate is neither in the message nor known to us"
        else:
            error = _check_signer_info(signer, signed_attrs, attributes, content, encap, signer_cert, digest_name)

    return SignedMessage(
        content=content,
        content_type=encap["content_type"].native,
        digest_algorithm=digest_name,
        signer_certificate=signer_cert,
        signed_attributes=attributes,
        certificates=certificates,
        signature_error=error,
    )


def _check_signer_info(signer, signed_attrs, attributes, content, encap, signer_cert, digest_name) -> str | None:
    signature = signer["signature"].native
    scheme = signer["signature_algorithm"].signature_algo
    if not signed_attrs:
        data = content
    else:
        if (attributes.get("content_type") or [None])[0] != encap["content_type"].native:
            return "the contentType signed attribute does not match the content"
        if (attributes.get("message_digest") or [None])[0] != signatures.digest(digest_name, content):
            return "the messageDigest signed attribute does not match the content"
        # The signature covers the attributes as a SET OF (tag 0x31), as they were sent: their
        # contents under a universal SET header (what untag().dump() gives, without copying).
        data = asn1_parser.emit(0, 1, 17, signed_attrs.contents)
    if not signatures.verify_signature(signer_cert.public_key(), scheme, digest_name, data, signature):
        return "the signature does not verify with the signer's certificate"
    return None


@functools.lru_cache(maxsize=64)
def _signer_identity(certificate: x509.Certificate) -> tuple[cms.SignerIdentifier, cms.CertificateSet]:
    """The SignerIdentifier and certificate set of a signer, built once per certificate.
    asn1crypto is slow at building a structure from Python values and costs nothing when it
    embeds one already built; these never change for the server's RA."""
    asn1 = _to_asn1(certificate)
    sid = cms.SignerIdentifier(
        name="issuer_and_serial_number", value={"issuer": asn1.issuer, "serial_number": asn1.serial_number}
    )
    # Kept as parsed, not as built: a built value counts as changed and is encoded again
    # every time; a parsed one hands out its bytes. The set carries SignedData's [0] tag,
    # so that embedding it does not copy it.
    certificate_set = cms.CertificateSet([asn1], implicit=0)
    return _frozen(sid), _frozen(certificate_set, implicit=0)


@functools.lru_cache(maxsize=256)
def _fixed_attribute(name: str, value: str) -> cms.CMSAttribute:
    """An attribute whose value comes from a short list (contentType, messageType, pkiStatus,
    failInfo), built once."""
    return _frozen(cms.CMSAttribute({"type": name, "values": [value]}))


@functools.lru_cache(maxsize=64)
def _digest_algorithms(digest_algorithm: str) -> tuple[cms.DigestAlgorithm, cms.DigestAlgorithms]:
    """The SignerInfo's digestAlgorithm and the SignedData's set of them, built once."""
    return (
        _frozen(cms.DigestAlgorithm({"algorithm": digest_algorithm})),
        _frozen(cms.DigestAlgorithms([{"algorithm": digest_algorithm}])),
    )


_FIXED_ATTRIBUTES = {"content_type", "scep_message_type", "scep_pki_status", "scep_fail_info"}


def _attribute(name: str, value) -> cms.CMSAttribute:
    if name in _FIXED_ATTRIBUTES:
        return _fixed_attribute(name, value)
    return _frozen(cms.CMSAttribute({"type": name, "values": [value]}))


def build_signed_data(
    content: bytes,
    signer_certificate: x509.Certificate,
    signer_key,
    digest_algorithm: str,
    attributes: list[tuple[str, object]],
    certificates: tuple[x509.Certificate, ...] = (),
) -> bytes:
    """A DER SignedData over `content` (type data), signed with SCEP attributes.

    `attributes` are (asn1crypto attribute name, value) pairs added after contentType,
    signingTime and messageDigest.
    """
    sid, signer_set = _signer_identity(signer_certificate)
    digest_id, digest_ids = _digest_algorithms(digest_algorithm)
    attrs = [
        _attribute("content_type", "data"),
        _attribute("signing_time", cms.Time({"utc_time": dt.datetime.now(dt.timezone.utc)})),
        _attribute("message_digest", signatures.digest(digest_algorithm, content)),
    ]
    attrs += [_attribute(name, value) for name, value in attributes]
    # Built with SignerInfo's [0] tag; the signature covers the same contents under the
    # SET OF tag (RFC 5652 5.4), which asn1crypto's encoder writes around them.
    signed_attrs = _frozen(cms.CMSAttributes(attrs, implicit=0), implicit=0)
    set_of = asn1_parser.emit(0, 1, 17, signed_attrs.contents)  # universal, constructed, SET
    signature = signatures.sign(signer_key, digest_algorithm, set_of)
    signer_info = _frozen(cms.SignerInfo(
        {
            "version": "v1",
            "sid": sid,
            "digest_algorithm": digest_id,
            "signed_attrs": signed_attrs,
            "signature_algorithm": signatures.signature_algorithm_id(signer_key, digest_algorithm),
            "signature": signature,
        }
    ))
    certs = signer_set
    if certificates:
        certs = cms.CertificateSet([_to_asn1(signer_certificate)] + [_to_asn1(c) for c in certificates], implicit=0)
    signed_data = {
        "version": "v1",
        "digest_algorithms": digest_ids,
        "encap_content_info": {"content_type": "data", "content": content},
        "certificates": certs,
        "signer_infos": [signer_info],
    }
    return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()


def build_certs_only(
    certificates: list[x509.Certificate], crls: list[x509.CertificateRevocationList] = ()
) -> bytes:
    """A degenerate SignedData: certificates (or CRLs) and no signers (RFC 8894 section 3.4)."""
    if not crls:
        return pkcs7.serialize_certificates(list(certificates), Encoding.DER)
    # cryptography's writer takes no CRLs (GetCRL's reply): built here.
    signed_data = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [],
        "encap_content_info": {"content_type": "data"},
        "certificates": [_to_asn1(c) for c in certificates],
        "signer_infos": [],
        "crls": [asn1_crl.CertificateList.load(c.public_bytes(Encoding.DER)) for c in crls],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()


def parse_certs_only(der: bytes) -> list[x509.Certificate]:
    return parse_certs_and_crls(der)[0]


def parse_certs_and_crls(der: bytes) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList]]:
    _, signed_data = load_content(der, "signed_data")
    try:
        certs = [_to_cryptography(c.chosen) for c in (signed_data["certificates"] or []) if c.name == "certificate"]
        crls = [x509.load_der_x509_crl(c.chosen.dump()) for c in (signed_data["crls"] or []) if c.name == "crl"]
    except Exception as exc:
        raise _undecodable("a certificate or CRL in the certs-only message cannot be read", exc) from None
    return certs, crls


# --- EnvelopedData / AuthEnvelopedData --------------------------------------------------


@dataclass(frozen=True)
class Decrypted:
    content: bytes
    cipher: ContentCipher
    key_transport: KeyTransport
    recipient: x509.Certificate


def _key_transport_of(algorithm: cms.KeyEncryptionAlgorithm) -> KeyTransport:
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return PKCS1V15
    if name == "rsaes_oaep":
        params = algorithm["parameters"]
        hash_name = params["hash_algorithm"]["algorithm"].native if params else "sha1"
        return KeyTransport("rsaes_oaep", hash_name)
    raise ProtocolError(FailInfo.BAD_ALG, "UnsupportedAlgorithm", f"key transport {name} is not supported")


def decrypt_enveloped(der: bytes, recipients: list[tuple[x509.Certificate, object]]) -> Decrypted:
    """Decrypt an EnvelopedData (or AuthEnvelopedData, for AES-GCM) with one of `recipients`.

    `recipients` are (certificate, private key) pairs; the RecipientInfo naming one of them is
    used. A message addressed to none of them is refused with badMessageCheck.
    """
    content_type, envelope = load_content(der, "enveloped_data", "authenticated_enveloped_data")
    with _decoding("the encrypted part cannot be read"):
        return _decrypt(content_type, envelope, recipients)


def _decrypt(content_type: str, envelope, recipients) -> Decrypted:
    if content_type == "enveloped_data":
        eci = envelope["encrypted_content_info"]
    else:
        eci = envelope["auth_encrypted_content_info"]

    ours = [(_known_asn1(c), c, k) for c, k in recipients]
    chosen = None
    for ri in envelope["recipient_infos"]:
        if ri.name != "ktri":
            continue
        for asn1_cert, cert, key in ours:
            if _names_certificate(asn1_cert, ri.chosen["rid"]):
                chosen = (ri.chosen, cert, key)
                break
        if chosen:
            break
    if chosen is None:
        raise ProtocolError(
            FailInfo.BAD_MESSAGE_CHECK,
            "RecipientUnknown",
            "the request is encrypted to a certificate this server does not hold; "
            "fetch the current RA certificate with GetCACert",
        )
    ktri, cert, key = chosen
    transport = _key_transport_of(ktri["key_encryption_algorithm"])
    try:
        cek = key.decrypt(ktri["encrypted_key"].native, transport._padding())
    except ValueError:
        raise ProtocolError(
            FailInfo.BAD_MESSAGE_CHECK, "DecryptionFailed", "the content-encryption key cannot be decrypted"
        ) from None

    algorithm = eci["content_encryption_algorithm"]
    try:
        cipher = ContentCipher(algorithm["algorithm"].native)
    except ValueError:
        raise ProtocolError(
            FailInfo.BAD_ALG,
            "UnsupportedAlgorithm",
            f"content encryption {algorithm['algorithm'].native} is not supported",
        ) from None
    if len(cek) != cipher.key_size:
        raise ProtocolError(
            FailInfo.BAD_MESSAGE_CHECK, "DecryptionFailed", "the content-encryption key has the wrong length"
        )
    ciphertext = eci["encrypted_content"].native or b""
    try:
        if cipher.is_gcm:
            params = algorithm["parameters"]
            tag = envelope["mac"].native if content_type == "authenticated_enveloped_data" else None
            if tag is None:  # GCM inside plain EnvelopedData: the tag trails the ciphertext
                icv = params["aes_icvlen"].native
                ciphertext, tag = ciphertext[:-icv], ciphertext[-icv:]
            decryptor = Cipher(
                algorithms.AES(cek), modes.GCM(params["aes_nonce"].native, tag, min_tag_length=len(tag))
            ).decryptor()
            plaintext = decryptor.update(ciphertext) + decryptor.finalize()
        else:
            iv = algorithm["parameters"].native
            decryptor = Cipher(cipher._block_cipher(cek), modes.CBC(iv)).decryptor()
            padded = decryptor.update(ciphertext) + decryptor.finalize()
            unpadder = padding.PKCS7(len(iv) * 8).unpadder()
            plaintext = unpadder.update(padded) + unpadder.finalize()
    except Exception:
        raise ProtocolError(
            FailInfo.BAD_MESSAGE_CHECK,
            "DecryptionFailed",
            "the encrypted content does not decrypt (wrong key, corrupt data or bad padding)",
        ) from None
    return Decrypted(plaintext, cipher, transport, cert)


# What cryptography's PKCS7EnvelopeBuilder can seal (with PKCS #1 v1.5 key transport only):
# the ciphers nearly every client asks for. DES, 3DES, AES-192, GCM and OAEP are built here.
_LIBRARY_CIPHERS = {ContentCipher.AES_128_CBC: algorithms.AES128, ContentCipher.AES_256_CBC: algorithms.AES256}


def build_enveloped(
    content: bytes,
    recipient: x509.Certificate,
    cipher: ContentCipher,
    key_transport: KeyTransport = PKCS1V15,
) -> bytes:
    """Encrypt `content` to `recipient` (an RSA certificate). AES-GCM produces an
    AuthEnvelopedData (RFC 5083/5084); every other cipher an EnvelopedData."""
    public_key = recipient.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ProtocolError(
            FailInfo.BAD_ALG,
            "RecipientKeyNotRsa",
            "the reply can only be encrypted to an RSA certificate; sign the request with an RSA key",
        )
    library_cipher = _LIBRARY_CIPHERS.get(cipher)
    if library_cipher is not None and key_transport == PKCS1V15:
        builder = pkcs7.PKCS7EnvelopeBuilder().set_data(content).add_recipient(recipient)
        # Binary: the content is DER, not text for S/MIME's line-ending canonicalisation.
        return builder.set_content_encryption_algorithm(library_cipher).encrypt(
            Encoding.DER, [pkcs7.PKCS7Options.Binary]
        )
    recipient_asn1 = _to_asn1(recipient)
    cek = os.urandom(cipher.key_size)
    # Built bottom-up from frozen parts (see _frozen).
    rid = _frozen(cms.RecipientIdentifier(
        name="issuer_and_serial_number",
        value={"issuer": recipient_asn1.issuer, "serial_number": recipient_asn1.serial_number},
    ))
    ktri = _frozen(cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": rid,
            "key_encryption_algorithm": _key_transport_id(key_transport),
            "encrypted_key": public_key.encrypt(cek, key_transport._padding()),
        }
    ))
    recipient_infos = _frozen(cms.RecipientInfos([cms.RecipientInfo(name="ktri", value=ktri)]))
    if cipher.is_gcm:
        nonce = os.urandom(12)
        encryptor = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
        ciphertext = encryptor.update(content) + encryptor.finalize()
        envelope = {
            "version": "v0",
            "recipient_infos": recipient_infos,
            "auth_encrypted_content_info": _frozen(cms.EncryptedContentInfo({
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

    block = 8 if cipher in (ContentCipher.DES_CBC, ContentCipher.DES_EDE3_CBC) else 16
    iv = os.urandom(block)
    padder = padding.PKCS7(block * 8).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(cipher._block_cipher(cek), modes.CBC(iv)).encryptor()
    envelope = {
        "version": "v0",
        "recipient_infos": recipient_infos,
        "encrypted_content_info": _frozen(cms.EncryptedContentInfo({
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": cipher.value, "parameters": iv},
            "encrypted_content": encryptor.update(padded) + encryptor.finalize(),
        })),
    }
    return cms.ContentInfo({"content_type": "enveloped_data", "content": envelope}).dump()


@functools.lru_cache(maxsize=16)
def _key_transport_id(key_transport: KeyTransport) -> cms.KeyEncryptionAlgorithm:
    return _frozen(cms.KeyEncryptionAlgorithm(key_transport._algorithm_id()))


def certificate_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
