"""CMS (RFC 5652) as SCEP uses it: SignedData, EnvelopedData, AuthEnvelopedData, certs-only.

asn1crypto holds the structures (it reads most BER and writes DER; what it refuses of a
peer's BER is rewritten first, see `_readable_ber`); cryptography does every cryptographic
operation, and writes whole the two structures its PKCS #7 module can (a certs-only
SignedData; an EnvelopedData with AES-CBC and PKCS #1 v1.5 key transport): in Rust they cost
a tenth of building them here. EC recipients get the content key by ephemeral-static ECDH
(RFC 5753 KeyAgreeRecipientInfo).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from asn1crypto import algos, cms, core
from asn1crypto import crl as asn1_crl
from asn1crypto import keys as asn1_keys
from asn1crypto import parser as asn1_parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, keywrap, padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7

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


class _EccCmsSharedInfo(core.Sequence):
    """RFC 5753 ECC-CMS-SharedInfo, the X9.63 KDF's input besides the shared secret
    (asn1crypto does not define it)."""

    _fields = [
        ("key_info", cms.KeyEncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


# RFC 5753 / SEC 1 ECDH key-agreement schemes (X9.63 KDF with these hashes), which asn1crypto
# does not name; their parameters are the key-wrap algorithm. With the prime curves' cofactor
# of 1, cofactor ECDH computes what standard ECDH does.
_ECDH_SCHEMES = {
    "1.3.133.16.840.63.0.2": "sha1",
    "1.3.132.1.11.0": "sha224",
    "1.3.132.1.11.1": "sha256",
    "1.3.132.1.11.2": "sha384",
    "1.3.132.1.11.3": "sha512",
    "1.3.133.16.840.63.0.3": "sha1",  # the cofactorDH schemes
    "1.3.132.1.14.0": "sha224",
    "1.3.132.1.14.1": "sha256",
    "1.3.132.1.14.2": "sha384",
    "1.3.132.1.14.3": "sha512",
}
_STD_DH_SCHEME = {"sha256": "1.3.132.1.11.1", "sha384": "1.3.132.1.11.2", "sha512": "1.3.132.1.11.3"}
for _oid in _ECDH_SCHEMES:
    cms.KeyEncryptionAlgorithm._oid_specs[_oid] = cms.KeyEncryptionAlgorithm

# The AES key wraps (asn1crypto's names): KEK length, and whether RFC 5649 padding is used.
_KEY_WRAPS = {
    "aes128_wrap": (16, False),
    "aes192_wrap": (24, False),
    "aes256_wrap": (32, False),
    "aes128_wrap_pad": (16, True),
    "aes192_wrap_pad": (24, True),
    "aes256_wrap_pad": (32, True),
}


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
    Any decoding problem is a ProtocolError. asn1crypto parses lazily: read what you need of
    the content inside `read_ber`, so that BER it refuses can be read again rewritten."""
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
        raise _Unreadable(FailInfo.BAD_REQUEST, "MessageUndecodable", f"{what}: {exc}") from None


# --- BER from peers ---------------------------------------------------------------------
#
# Found by experiment (asn1crypto 1.5.1), valid BER that OpenSSL reads and asn1crypto refuses:
# - a string type's constructed form with a definite length (Go's go.mozilla.org/pkcs7 writes
#   encryptedContent so: "method should have been primitive, but constructed was found");
#   it reads the constructed form only with an indefinite length;
# - a CHOICE's alternative with an indefinite length (a SignerIdentifier, RecipientIdentifier,
#   KeyTransRecipientInfo or CertificateChoices): it parses the alternative again from its
#   header and contents, without the end-of-contents octets, and runs out of data.
# Indefinite-length SEQUENCEs elsewhere, and indefinite-length strings, it reads. So a peer's
# message is read as sent, and only when asn1crypto refuses it, once more rewritten into the
# same BER value in the form asn1crypto reads (`_readable_ber`); DER never takes that path.


class _Unreadable(ProtocolError):
    """asn1crypto could not read a peer's structure (what `_decoding` raises)."""


_T = TypeVar("_T")


def read_ber(data: bytes, what: str, read: Callable[[bytes], _T]) -> _T:
    """`read(data)`, reading a structure a peer sent with asn1crypto: every decoding error is
    a ProtocolError (MessageUndecodable: `what`), and BER that asn1crypto refuses is read again
    rewritten (see above). `read` must read all it needs: asn1crypto parses lazily."""

    def guarded(value: bytes) -> _T:
        with _decoding(what):
            return read(value)

    return _read_ber(data, guarded)


def _read_ber(data: bytes, read: Callable[[bytes], _T]) -> _T:
    try:
        return read(data)
    except _Unreadable as exc:
        refused = exc
    try:
        readable = _readable_ber(data)
    except Exception:  # not BER at all (or nested too deeply)
        readable = data
    if readable != data:
        try:
            return read(readable)
        except _Unreadable:
            pass
    raise refused  # asn1crypto's reason about the bytes as sent


# Universal types whose constructed form is a series of OCTET STRING segments, the value
# being their contents one after another (X.690 8.7, 8.23.5): OCTET STRING, the restricted
# character strings, UTCTime and GeneralizedTime. (A BIT STRING's segments each carry an
# unused-bits octet; asn1crypto reads them in the indefinite form, which is kept.)
_SEGMENTED = frozenset({4, 12, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30})
_BIT_STRING, _OCTET_STRING, _SET = 3, 4, 17
# Deeper than anything a client writes (a certificate is about 10 levels); bounds the work a
# hostile message can ask for.
_MAX_NESTING = 64


# asn1crypto.parser.parse reads the first element of the bytes it is given: each element is
# parsed from a window of the rest, so that many small ones cost linear time, not a copy of
# the rest each; one longer than the window is parsed from the whole rest.
_WINDOW = 512


def _elements(contents: bytes) -> list[tuple]:
    """The (class, method, tag, header, contents, trailer) of each element in `contents`."""
    elements = []
    pointer = 0
    while pointer < len(contents):
        try:
            element = asn1_parser.parse(contents[pointer:pointer + _WINDOW])
        except ValueError:
            element = asn1_parser.parse(contents[pointer:])
        elements.append(element)
        pointer += len(element[3]) + len(element[4]) + len(element[5])
    return elements


def _encoding(element: tuple) -> bytes:
    return element[3] + element[4] + element[5]


def _readable_ber(data: bytes, *, der: bool = False) -> bytes:
    """The BER value `data` encodes, written the way asn1crypto reads it: every element
    with a definite length, except a context- or application-tagged one made of OCTET
    STRINGs (an IMPLICIT OCTET STRING in segments, or an EXPLICIT one: the same bytes, which
    only a schema tells apart), which gets an indefinite length; universal strings sent in
    segments become primitive. (A DER certificate has no such tagged element outside its
    extensions' values, which are OCTET STRINGs: it keeps its bytes.)
    With `der`, the DER encoding instead, for values that are made of universal types and
    definite-length tagged ones (what signed attributes are): definite lengths, primitive
    strings, SET OF elements sorted. Elements that need no change keep their bytes."""
    element = asn1_parser.parse(data)
    rewritten = _rewritten(element, der, 0)
    return _encoding(element) if rewritten is None else rewritten


def _rewritten(element: tuple, der: bool, depth: int) -> bytes | None:
    """`element` as `_readable_ber` writes it, or None when it is written so already."""
    class_, constructed, tag, _, contents, trailer = element
    if not constructed:
        return None
    if depth > _MAX_NESTING:
        raise ValueError(f"nested more than {_MAX_NESTING} levels deep")
    if class_ == 0 and tag == _BIT_STRING:
        return None
    children = _elements(contents)
    if class_ == 0 and tag in _SEGMENTED:
        value = _segments_value(children, tag, depth + 1)
        return None if value is None else asn1_parser.emit(0, 0, tag, value)
    rewritten = [_rewritten(child, der, depth + 1) for child in children]
    parts = [_encoding(child) if new is None else new for child, new in zip(children, rewritten, strict=True)]
    changed = any(new is not None for new in rewritten)
    if der and class_ == 0 and tag == _SET:
        ordered = sorted(parts)
        changed, parts = changed or ordered != parts, ordered
    segments = children and all(c[0] == 0 and c[2] == _OCTET_STRING for c in children)
    if not der and class_ != 0 and segments:
        if trailer and not changed:
            return None
        identifier = asn1_parser.emit(class_, 1, tag, b"")[:-1]  # without its (zero) length
        return identifier + b"\x80" + b"".join(parts) + b"\x00\x00"
    if not trailer and not changed:
        return None
    return asn1_parser.emit(class_, 1, tag, b"".join(parts))


def _segments_value(children: list[tuple], tag: int, depth: int) -> bytes | None:
    """The value of a string sent as these segments, or None when they are not segments."""
    value = []
    for class_, constructed, child_tag, _, contents, _ in children:
        if class_ != 0 or child_tag not in (_OCTET_STRING, tag):
            return None
        if constructed:
            if depth > _MAX_NESTING:
                raise ValueError(f"nested more than {_MAX_NESTING} levels deep")
            contents = _segments_value(_elements(contents), tag, depth + 1)
            if contents is None:
                return None
        value.append(contents)
    return b"".join(value)


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
    if identifier.name == "r_key_id":  # a KeyAgreeRecipientInfo's RecipientKeyIdentifier
        return cert.key_identifier == identifier.chosen["subject_key_identifier"].native
    return cert.key_identifier == identifier.chosen.native


def parse_signed_data(der: bytes, known_certificates: tuple[x509.Certificate, ...] = ()) -> SignedMessage:
    """Parse and verify a SignedData with exactly one SignerInfo.

    The signer's certificate is looked up among the certificates the message carries and then
    among `known_certificates` (NDES, for one, sends a CertRep without certificates).
    """
    return _read_ber(der, lambda data: _parse_signed_data(data, known_certificates, der))


def _parse_signed_data(der: bytes, known_certificates: tuple[x509.Certificate, ...], sent: bytes) -> SignedMessage:
    """parse_signed_data on `der`: what the peer `sent`, or the same value rewritten."""
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
        content_type = encap["content_type"].native
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
        scheme = signer["signature_algorithm"].signature_algo
        signature = signer["signature"].native
        # The signature covers the attributes as a SET OF (tag 0x31), as they were sent: their
        # contents under a universal SET header (what untag().dump() gives, without copying).
        signed_set = asn1_parser.emit(0, 1, 17, signed_attrs.contents) if signed_attrs else None

    with _decoding("the SignerInfo cannot be checked"):
        if signer_cert is None:
            error = "the signer's certificate is neither in the message nor known to us"
        else:
            error = _check_signer_info(
                signer_cert, scheme, signature, digest_name, content_type, content, attributes, signed_set,
                # Only a rewritten copy (another object than the bytes sent) needs this.
                (lambda: _signed_attributes_as_sent(sent)) if der is not sent else None,
            )

    return SignedMessage(
        content=content,
        content_type=content_type,
        digest_algorithm=digest_name,
        signer_certificate=signer_cert,
        signed_attributes=attributes,
        certificates=certificates,
        signature_error=error,
    )


def _check_signer_info(
    signer_cert: x509.Certificate,
    scheme: str,
    signature: bytes,
    digest_name: str,
    content_type: str,
    content: bytes,
    attributes: dict[str, list],
    signed_set: bytes | None,
    as_sent: Callable[[], bytes | None] | None,
) -> str | None:
    """Why the SignerInfo does not verify, or None. `signed_set` is the signed attributes as
    read; `as_sent` finds them as the peer sent them, when what was read is a rewritten copy."""
    public_key = signer_cert.public_key()
    if signed_set is None:
        if signatures.verify_signature(public_key, scheme, digest_name, content, signature):
            return None
        return "the signature does not verify with the signer's certificate"
    if (attributes.get("content_type") or [None])[0] != content_type:
        return "the contentType signed attribute does not match the content"
    if (attributes.get("message_digest") or [None])[0] != signatures.digest(digest_name, content):
        return "the messageDigest signed attribute does not match the content"
    # RFC 5652 5.4: the signature covers the DER of the attributes. Nearly every client sends
    # exactly that; some sign their attributes unsorted, as they send them; BER attributes are
    # signed in their DER form. So: as read (the bytes sent, unless rewritten), as sent, DER.
    if signatures.verify_signature(public_key, scheme, digest_name, signed_set, signature):
        return None
    for data in _other_encodings(signed_set, as_sent):
        if signatures.verify_signature(public_key, scheme, digest_name, data, signature):
            return None
    return "the signature does not verify with the signer's certificate"


def _other_encodings(signed_set: bytes, as_sent: Callable[[], bytes | None] | None):
    """The signed attributes as sent (when `signed_set` is a rewritten copy), then in DER:
    each once, and only when it differs from what was tried before."""
    tried = {signed_set}
    sent = as_sent() if as_sent else None
    if sent is not None and sent not in tried:
        tried.add(sent)
        yield sent
    try:
        der = _readable_ber(signed_set, der=True)
    except ValueError:  # nested too deeply to rewrite: not a signature worth checking again
        return
    if der not in tried:
        yield der


def _signed_attributes_as_sent(der: bytes) -> bytes | None:
    """The signed attributes of the (one) SignerInfo as a SET OF, found in the message as the
    peer sent it: ContentInfo, its [0], the SignedData, its last element (signerInfos), the
    SignerInfo, its fourth element when that is the [0] of signedAttrs."""
    try:
        content_info = asn1_parser.parse(der)
        signed_data = _elements(_elements(content_info[4])[1][4])[0]
        signer_info = _elements(_elements(signed_data[4])[-1][4])[0]
        attrs = _elements(signer_info[4])[3]
    except (ValueError, IndexError):
        return None
    if attrs[:3] != (2, 1, 0):
        return None
    return asn1_parser.emit(0, 1, 17, attrs[4])


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
    def read(data: bytes):
        _, signed_data = load_content(data, "signed_data")
        certs = [_to_cryptography(c.chosen) for c in (signed_data["certificates"] or []) if c.name == "certificate"]
        crls = [x509.load_der_x509_crl(c.chosen.dump()) for c in (signed_data["crls"] or []) if c.name == "crl"]
        return certs, crls

    return read_ber(der, "a certificate or CRL in the certs-only message cannot be read", read)


# --- EnvelopedData / AuthEnvelopedData --------------------------------------------------


@dataclass(frozen=True)
class Decrypted:
    content: bytes
    cipher: ContentCipher
    # How the content key came: by RSA key transport, or None when it was agreed by ECDH
    # (a reply to an RSA certificate then uses PKCS #1 v1.5).
    key_transport: KeyTransport | None
    recipient: x509.Certificate


# Every way an envelope fails to open once it is read (a wrong key, bad RSA padding, a
# content key of the wrong length, corrupt ciphertext, bad content padding) ends in these
# words: which step failed is what a padding-oracle attack needs to know.
DECRYPTION_FAILED = "the encrypted content does not decrypt (wrong key, corrupt data or bad padding)"


def _decryption_failed() -> ProtocolError:
    return ProtocolError(FailInfo.BAD_MESSAGE_CHECK, "DecryptionFailed", DECRYPTION_FAILED)


def _unsupported(what: str) -> ProtocolError:
    return ProtocolError(FailInfo.BAD_ALG, "UnsupportedAlgorithm", f"{what} is not supported")


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
    raise _unsupported(f"key transport {name}")


@dataclass(frozen=True)
class _Agreement:
    """A KeyAgreeRecipientInfo's ephemeral-static ECDH, read (RFC 5753)."""

    kdf_hash: str
    key_wrap: str  # a key of _KEY_WRAPS
    originator_point: bytes
    ukm: bytes | None


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
    agreement: _Agreement | None  # for a KeyAgreeRecipientInfo


def decrypt_enveloped(der: bytes, recipients: list[tuple[x509.Certificate, object]]) -> Decrypted:
    """Decrypt an EnvelopedData (or AuthEnvelopedData, for AES-GCM) with one of `recipients`.

    `recipients` are (certificate, private key) pairs: RSA ones open a KeyTransRecipientInfo,
    EC ones a KeyAgreeRecipientInfo; the first RecipientInfo naming one of them is used. A
    message addressed to none of them is refused with badMessageCheck.
    """
    sealed = _read_ber(der, lambda data: _read_envelope(data, recipients))
    cek = _content_key(sealed)
    return Decrypted(_decrypt_content(sealed, cek), sealed.cipher, sealed.transport, sealed.certificate)


def _read_envelope(der: bytes, recipients) -> _Sealed:
    """Everything decryption needs, read from the envelope (where asn1crypto reads it)."""
    content_type, envelope = load_content(der, "enveloped_data", "authenticated_enveloped_data")
    with _decoding("the encrypted part cannot be read"):
        if content_type == "enveloped_data":
            eci = envelope["encrypted_content_info"]
        else:
            eci = envelope["auth_encrypted_content_info"]
        info, certificate, key, recipient_key = _our_recipient(envelope["recipient_infos"], recipients)
        algorithm = eci["content_encryption_algorithm"]
        try:
            cipher = ContentCipher(algorithm["algorithm"].native)
        except ValueError:
            raise _unsupported(f"content encryption {algorithm['algorithm'].native}") from None
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
        agreement = _agreement_of(info.chosen)
        return _Sealed(cipher, iv, tag, ciphertext, certificate, key, recipient_key["encrypted_key"].native,
                       None, agreement)


def _our_recipient(recipient_infos, recipients):
    """(RecipientInfo, certificate, key, RecipientEncryptedKey or None) of the first
    RecipientInfo naming one of `recipients`."""
    ours = [(_known_asn1(c), c, k) for c, k in recipients]
    for info in recipient_infos:
        if info.name == "ktri":
            for asn1_cert, cert, key in ours:
                if _names_certificate(asn1_cert, info.chosen["rid"]):
                    return info, cert, key, None
        elif info.name == "kari":
            for recipient_key in info.chosen["recipient_encrypted_keys"]:
                for asn1_cert, cert, key in ours:
                    if _names_certificate(asn1_cert, recipient_key["rid"]):
                        return info, cert, key, recipient_key
    raise ProtocolError(
        FailInfo.BAD_MESSAGE_CHECK,
        "RecipientUnknown",
        "the request is encrypted to a certificate this server does not hold; "
        "fetch the current RA certificate with GetCACert",
    )


def _agreement_of(kari: cms.KeyAgreeRecipientInfo) -> _Agreement:
    algorithm = kari["key_encryption_algorithm"]
    kdf_hash = _ECDH_SCHEMES.get(algorithm["algorithm"].dotted)
    if kdf_hash is None:
        raise _unsupported(f"key agreement {algorithm['algorithm'].native}")
    key_wrap = algorithm["parameters"]["algorithm"].native
    if key_wrap not in _KEY_WRAPS:
        raise _unsupported(f"key wrap {key_wrap}")
    originator = kari["originator"]
    if originator.name != "originator_key" or originator.chosen["algorithm"]["algorithm"].native != "ec":
        raise _unsupported("key agreement with anything but an ephemeral EC key")
    ukm = kari["ukm"].native if kari["ukm"] else None
    return _Agreement(kdf_hash, key_wrap, originator.chosen["public_key"].native, ukm)


def _content_key(sealed: _Sealed) -> bytes:
    key, size = sealed.key, sealed.cipher.key_size
    if sealed.agreement is not None:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise _decryption_failed()
        return _agreed_key(sealed.agreement, key, sealed.encrypted_key, size)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _decryption_failed()
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


def _agreed_key(agreement: _Agreement, key: ec.EllipticCurvePrivateKey, wrapped: bytes, size: int) -> bytes:
    """The content key of a KeyAgreeRecipientInfo: ECDH with the originator's ephemeral key,
    the X9.63 KDF over ECC-CMS-SharedInfo, then AES key unwrap (which checks its integrity)."""
    kek_length, padded = _KEY_WRAPS[agreement.key_wrap]
    try:
        # Its curve is the recipient's (RFC 5753 lets the originator leave it out).
        originator = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, agreement.originator_point)
        shared = key.exchange(ec.ECDH(), originator)
        kek = X963KDF(
            signatures.hash_algorithm(agreement.kdf_hash), kek_length,
            _shared_info(agreement.key_wrap, agreement.ukm, kek_length),
        ).derive(shared)
        unwrap = keywrap.aes_key_unwrap_with_padding if padded else keywrap.aes_key_unwrap
        cek = unwrap(kek, wrapped)
    except (ValueError, keywrap.InvalidUnwrap):
        raise _decryption_failed() from None
    if len(cek) != size:
        raise _decryption_failed()
    return cek


@functools.lru_cache(maxsize=64)
def _shared_info(key_wrap: str, ukm: bytes | None, kek_length: int) -> bytes:
    """DER ECC-CMS-SharedInfo: the key wrap (AES wraps take no parameters), the ukm, the KEK
    length in bits (RFC 5753 7.2)."""
    value = {"key_info": {"algorithm": key_wrap}, "supp_pub_info": (kek_length * 8).to_bytes(4, "big")}
    if ukm is not None:
        value["entity_u_info"] = ukm
    return _EccCmsSharedInfo(value).dump()


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
        raise _decryption_failed() from None


# What cryptography's PKCS7EnvelopeBuilder can seal (with PKCS #1 v1.5 key transport only):
# the ciphers nearly every client asks for. DES, 3DES, AES-192, GCM, OAEP and every EC
# recipient are built here.
_LIBRARY_CIPHERS = {ContentCipher.AES_128_CBC: algorithms.AES128, ContentCipher.AES_256_CBC: algorithms.AES256}

# The AES key wrap for each content-key length: as strong as the content cipher. RFC 3394
# wraps 16 bytes or more; single DES's 8 take RFC 5649's padded wrap.
_WRAP_FOR_KEY = {8: "aes128_wrap_pad", 16: "aes128_wrap", 24: "aes192_wrap", 32: "aes256_wrap"}


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
        recipient_info = _kari(cek, recipient, public_key, cipher)
    else:
        raise ProtocolError(
            FailInfo.BAD_ALG,
            "UnsupportedAlgorithm",
            f"nothing can be encrypted to a {type(public_key).__name__}: the signer's key must be RSA or EC",
        )
    recipient_infos = _frozen(cms.RecipientInfos([recipient_info]))
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
        # RFC 5652 6.1: 0 when every RecipientInfo is a version 0 one (ktri), else 2.
        "version": "v0" if recipient_info.name == "ktri" else "v2",
        "recipient_infos": recipient_infos,
        "encrypted_content_info": _frozen(cms.EncryptedContentInfo({
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": cipher.value, "parameters": iv},
            "encrypted_content": encryptor.update(padded) + encryptor.finalize(),
        })),
    }
    return cms.ContentInfo({"content_type": "enveloped_data", "content": envelope}).dump()


def _recipient_identifier(recipient: x509.Certificate, spec):
    asn1 = _to_asn1(recipient)
    return spec(name="issuer_and_serial_number", value={"issuer": asn1.issuer, "serial_number": asn1.serial_number})


def _ktri(cek: bytes, recipient: x509.Certificate, public_key: rsa.RSAPublicKey, key_transport: KeyTransport):
    # Built bottom-up from frozen parts (see _frozen).
    ktri = _frozen(cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": _frozen(_recipient_identifier(recipient, cms.RecipientIdentifier)),
            "key_encryption_algorithm": _key_transport_id(key_transport),
            "encrypted_key": public_key.encrypt(cek, key_transport._padding()),
        }
    ))
    return cms.RecipientInfo(name="ktri", value=ktri)


def _kari(cek: bytes, recipient: x509.Certificate, public_key: ec.EllipticCurvePublicKey, cipher: ContentCipher):
    """A KeyAgreeRecipientInfo (RFC 5753 ephemeral-static ECDH): a fresh key on the recipient's
    curve, the X9.63 KDF with the hash that matches the curve's size, the AES key wrap that
    matches the content cipher (as OpenSSL and RFC 5008's suites pair them)."""
    key_wrap = _WRAP_FOR_KEY[cipher.key_size]
    kek_length, padded = _KEY_WRAPS[key_wrap]
    bits = public_key.curve.key_size
    kdf_hash = "sha256" if bits <= 256 else "sha384" if bits <= 384 else "sha512"
    ephemeral = ec.generate_private_key(public_key.curve)
    shared = ephemeral.exchange(ec.ECDH(), public_key)
    shared_info = _shared_info(key_wrap, None, kek_length)
    kek = X963KDF(signatures.hash_algorithm(kdf_hash), kek_length, shared_info).derive(shared)
    wrap = keywrap.aes_key_wrap_with_padding if padded else keywrap.aes_key_wrap
    originator = asn1_keys.PublicKeyInfo.load(
        ephemeral.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    kari = cms.KeyAgreeRecipientInfo({
        "version": "v3",
        "originator": cms.OriginatorIdentifierOrKey(name="originator_key", value=originator),
        "key_encryption_algorithm": {
            "algorithm": _STD_DH_SCHEME[kdf_hash],
            "parameters": cms.KeyEncryptionAlgorithm({"algorithm": key_wrap}),
        },
        "recipient_encrypted_keys": [{
            "rid": _recipient_identifier(recipient, cms.KeyAgreementRecipientIdentifier),
            "encrypted_key": wrap(kek, cek),
        }],
    })
    return cms.RecipientInfo(name="kari", value=kari)


@functools.lru_cache(maxsize=16)
def _key_transport_id(key_transport: KeyTransport) -> cms.KeyEncryptionAlgorithm:
    return _frozen(cms.KeyEncryptionAlgorithm(key_transport._algorithm_id()))


def certificate_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
