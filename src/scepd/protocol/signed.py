"""SignedData (RFC 5652 section 5): read and verify a peer's, sign our own, and the
degenerate certs-only form that carries certificates and CRLs (RFC 8894 section 3.4).

Our own are put together from their parts' encodings, those of the signer built once; a
peer's are read through `ber.read_ber`, and their signature is checked over the signed
attributes as sent, then in DER (some clients sign them unsorted).
May import: asn1crypto, cryptography and scepd.protocol's ber, certificates, errors, signatures.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from asn1crypto import cms, core
from asn1crypto import crl as asn1_crl
from asn1crypto import parser as asn1_parser
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from scepd.protocol import ber, signatures
from scepd.protocol.certificates import (
    issuer_and_serial,
    known_asn1,
    names_certificate,
    to_asn1,
    to_cryptography,
)
from scepd.protocol.errors import undecodable


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


def parse_signed_data(der: bytes, known_certificates: tuple[x509.Certificate, ...] = ()) -> SignedMessage:
    """Parse and verify a SignedData with exactly one SignerInfo.

    The signer's certificate is looked up among the certificates the message carries and then
    among `known_certificates` (NDES, for one, sends a CertRep without certificates).
    """
    return ber.with_rewriting(der, lambda data: _parse_signed_data(data, known_certificates, der))


def _parse_signed_data(der: bytes, known_certificates: tuple[x509.Certificate, ...], sent: bytes) -> SignedMessage:
    """parse_signed_data on `der`: what the peer `sent`, or the same value rewritten."""
    _, signed_data = ber.load_content(der, "signed_data")
    with ber.decoding("the SignedData cannot be read"):
        infos = signed_data["signer_infos"]
        if len(infos) != 1:
            raise undecodable(f"expected one SignerInfo, found {len(infos)}")
        signer = infos[0]
        certificates, signer_cert = _certificates(signed_data, signer["sid"], known_certificates)
        content_type, content = _encapsulated(signed_data["encap_content_info"])
        attributes, signed_set = _signed_attributes(signer["signed_attrs"])
        digest_name = signer["digest_algorithm"]["algorithm"].native
        scheme = signer["signature_algorithm"].signature_algo
        signature = signer["signature"].native

    with ber.decoding("the SignerInfo cannot be checked"):
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


def _certificates(signed_data: cms.SignedData, sid: cms.SignerIdentifier, known: tuple[x509.Certificate, ...]):
    """(the certificates the message carries, the signer's among them or `known`, or None)."""
    carried = [c.chosen for c in (signed_data["certificates"] or []) if c.name == "certificate"]
    certificates = tuple(to_cryptography(c) for c in carried)
    candidates = list(zip(carried, certificates, strict=True)) + [(known_asn1(c), c) for c in known]
    return certificates, next((cert for asn1, cert in candidates if names_certificate(asn1, sid)), None)


def _encapsulated(encap: cms.EncapsulatedContentInfo) -> tuple[str, bytes]:
    content = encap["content"].native if encap["content"] else b""
    if isinstance(content, core.Asn1Value):  # a parsable content type other than data
        content = content.dump()
    return encap["content_type"].native, content or b""


def _signed_attributes(signed_attrs: cms.CMSAttributes | None) -> tuple[dict[str, list], bytes | None]:
    """The attributes by name, and what the signature covers: the attributes as a SET OF (tag
    0x31), as they were sent (their contents under a universal SET header, which is what
    untag().dump() gives, without copying); None when there are none.

    Each attribute is read from its elements, its values by the class asn1crypto's CMS
    attribute table names for its type: the same values as CMSAttribute's own reading
    (test_protocol compares them), at a fifth of its cost. A type the table does not know
    is read by CMSAttribute itself."""
    if not signed_attrs:
        return {}, None
    attributes: dict[str, list] = {}
    for element in ber.elements(signed_attrs.contents):
        name, values = _attribute_values(element)
        attributes[name] = values
    return attributes, ber.der_set_of(signed_attrs.contents)


@functools.lru_cache(maxsize=256)
def _attribute_type(oid: bytes) -> tuple[str, type | None]:
    """The name of an attribute type (its OID's contents) and the class of its values; None
    for a type asn1crypto's table does not know."""
    name = cms.CMSAttributeType.load(asn1_parser.emit(0, 0, 6, oid)).native
    spec = cms.CMSAttribute._oid_specs.get(name)
    child = getattr(spec, "_child_spec", None)
    return name, child if child is not None and child is not core.Any else None


def _attribute_values(element: tuple) -> tuple[str, list]:
    """(type name, native values) of one Attribute ::= SEQUENCE { attrType, attrValues SET }."""
    class_, method, tag, header, contents, trailer = element
    parts = ber.elements(contents) if (class_, method, tag) == (0, 1, 16) else []
    if len(parts) == 2 and parts[0][:3] == (0, 0, 6) and parts[1][:3] == (0, 1, 17):
        name, value_class = _attribute_type(parts[0][4])
        if value_class is not None:
            return name, [value_class.load(b"".join(value[3:])).native for value in ber.elements(parts[1][4])]
    attribute = cms.CMSAttribute.load(header + contents + trailer)
    return attribute["type"].native, [v.native if isinstance(v, core.Asn1Value) else v for v in attribute["values"]]


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
        der = ber.readable_ber(signed_set, der=True)
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
        signed_data = ber.elements(ber.elements(content_info[4])[1][4])[0]
        signer_info = ber.elements(ber.elements(signed_data[4])[-1][4])[0]
        attrs = ber.elements(signer_info[4])[3]
    except (ValueError, IndexError):
        return None
    if attrs[:3] != (2, 1, 0):
        return None
    return ber.der_set_of(attrs[4])


@dataclass(frozen=True)
class _SignerParts:
    """The encoded parts of our SignedData that depend only on the signer, its digest and its
    signature algorithm: built once (asn1crypto is slow at building a structure from Python
    values, and these never change for the server's RA)."""

    signer_info_head: bytes  # SignerInfo's version, sid and digestAlgorithm
    signature_algorithm: bytes
    signed_data_head: bytes  # SignedData's version and digestAlgorithms
    certificates: bytes  # SignedData's [0] certificates: the signer's certificate


@functools.lru_cache(maxsize=64)
def _signer_parts(certificate: x509.Certificate, digest_algorithm: str, signature_algorithm: str) -> _SignerParts:
    digest = cms.DigestAlgorithm({"algorithm": digest_algorithm})
    return _SignerParts(
        signer_info_head=cms.CMSVersion("v1").dump() + issuer_and_serial(certificate, cms.SignerIdentifier).dump()
        + digest.dump(),
        signature_algorithm=cms.SignedDigestAlgorithm({"algorithm": signature_algorithm}).dump(),
        signed_data_head=cms.CMSVersion("v1").dump() + cms.DigestAlgorithms([digest]).dump(),
        certificates=cms.CertificateSet([to_asn1(certificate)], implicit=0).dump(),
    )


_DATA = cms.ContentType("data").dump()
_SIGNED_DATA = cms.ContentType("signed_data").dump()


@functools.lru_cache(maxsize=256)
def _fixed_attribute(name: str, value: str) -> cms.CMSAttribute:
    """An attribute whose value comes from a short list (contentType, messageType, pkiStatus,
    failInfo), built once."""
    return ber.frozen(cms.CMSAttribute({"type": name, "values": [value]}))


_FIXED_ATTRIBUTES = {"content_type", "scep_message_type", "scep_pki_status", "scep_fail_info"}


@functools.lru_cache(maxsize=64)
def _attribute_parts(name: str) -> tuple[bytes, type]:
    """The encoded attrType of attribute `name` and the class of its values (asn1crypto's
    own spec, SCEP's registered in types.py)."""
    return cms.CMSAttributeType(name).dump(), cms.CMSAttribute._oid_specs[name]._child_spec


def _attribute(name: str, value) -> cms.CMSAttribute:
    """One signed attribute. A per-message value (nonces, transactionID, digest, time) is
    encoded alone by its asn1crypto class and the Attribute put around it from the parts'
    encodings: an asn1crypto Attribute built from Python values costs 42 us, this 3 us (five
    per reply)."""
    if name in _FIXED_ATTRIBUTES:
        return _fixed_attribute(name, value)
    type_der, value_class = _attribute_parts(name)
    value_der = (value if isinstance(value, core.Asn1Value) else value_class(value)).dump()
    # Attribute ::= SEQUENCE { attrType, attrValues SET OF } (RFC 5652 5.3), one value.
    return cms.CMSAttribute.load(ber.der_sequence(type_der, ber.der_set_of(value_der)))


def build_signed_data(
    content: bytes,
    signer_certificate: x509.Certificate,
    signer_key,
    digest_algorithm: str,
    attributes: list[tuple[str, object]],
    certificates: tuple[x509.Certificate, ...] = (),
    *,
    signing_time: dt.datetime | None = None,
) -> bytes:
    """A DER SignedData over `content` (type data), signed with SCEP attributes.

    `attributes` are (asn1crypto attribute name, value) pairs added after contentType,
    signingTime and messageDigest. `signing_time`: the caller's clock (the server passes its
    own); None, the system clock (a client's messages, the tests').
    """
    algorithm = signatures.signature_algorithm_id(signer_key, digest_algorithm)["algorithm"]
    parts = _signer_parts(signer_certificate, digest_algorithm, algorithm)
    attrs = [
        _attribute("content_type", "data"),
        _attribute("signing_time", cms.Time({"utc_time": signing_time or dt.datetime.now(dt.timezone.utc)})),
        _attribute("message_digest", signatures.digest(digest_algorithm, content)),
    ]
    attrs += [_attribute(name, value) for name, value in attributes]
    # The SignedData is put together from its parts' encodings, as asn1crypto would encode
    # it from Python values (test_protocol checks that byte for byte) at a tenth of the cost:
    # a SET OF's elements sorted by their encodings (X.690 11.6), the signed attributes
    # under SignerInfo's [0] and, for the signature, under the SET OF tag (RFC 5652 5.4).
    signed_attrs = b"".join(sorted(attr.dump() for attr in attrs))
    signature = signatures.sign(signer_key, digest_algorithm, ber.der_set_of(signed_attrs))
    signer_info = ber.der_sequence(parts.signer_info_head, ber.der_tagged(0, signed_attrs), parts.signature_algorithm,
                            core.OctetString(signature).dump())
    certs = parts.certificates
    if certificates:
        certs = cms.CertificateSet([to_asn1(signer_certificate)] + [to_asn1(c) for c in certificates], implicit=0).dump()
    encapsulated = ber.der_sequence(_DATA, ber.der_tagged(0, core.OctetString(content).dump()))
    signed_data = ber.der_sequence(parts.signed_data_head, encapsulated, certs, ber.der_set_of(signer_info))
    return ber.der_sequence(_SIGNED_DATA, ber.der_tagged(0, signed_data))


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
        "certificates": [to_asn1(c) for c in certificates],
        "signer_infos": [],
        "crls": [asn1_crl.CertificateList.load(c.public_bytes(Encoding.DER)) for c in crls],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()


def parse_certs_only(der: bytes) -> list[x509.Certificate]:
    return parse_certs_and_crls(der)[0]


def parse_certs_and_crls(der: bytes) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList]]:
    def read(data: bytes):
        _, signed_data = ber.load_content(data, "signed_data")
        certs = [to_cryptography(c.chosen) for c in (signed_data["certificates"] or []) if c.name == "certificate"]
        crls = [x509.load_der_x509_crl(c.chosen.dump()) for c in (signed_data["crls"] or []) if c.name == "crl"]
        return certs, crls

    return ber.read_ber(der, "a certificate or CRL in the certs-only message cannot be read", read)

