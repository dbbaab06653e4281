"""X.509 names and usages as scepd writes them in text: subjectAltNames (dns:, ip:, email:,
uri:, upn:), key usage names and extended key usage names (as certificate templates, MDM
challenges and the command line spell them).

One parser and one writer each, so that a SAN given on the command line, in a challenge's
claims or in a profile means the same name that a CSR carries.
"""

from __future__ import annotations

import ipaddress

from asn1crypto import core
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

# Microsoft's User Principal Name, an otherName holding a UTF8String.
UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")

SAN_KINDS = ("dns", "ip", "email", "uri", "upn")


def san_parts(text: str) -> tuple[str, str]:
    """(kind, value) of a SAN written TYPE:VALUE, the kind lower-cased; ValueError when the
    form or the kind is wrong."""
    kind, sep, value = text.partition(":")
    kind = kind.lower()
    if not sep or not value:
        raise ValueError(f"{text!r}: expected TYPE:VALUE with TYPE {', '.join(SAN_KINDS)}")
    if kind not in SAN_KINDS:
        raise ValueError(f"{text!r}: unknown SAN type {kind!r} ({', '.join(SAN_KINDS)})")
    return kind, value


def parse_san(text: str) -> x509.GeneralName:
    """dns:NAME, ip:ADDRESS, email:ADDRESS, uri:URI or upn:USER@REALM."""
    kind, value = san_parts(text)
    if kind == "dns":
        return x509.DNSName(value)
    if kind == "ip":
        return x509.IPAddress(ipaddress.ip_address(value))
    if kind == "email":
        return x509.RFC822Name(value)
    if kind == "uri":
        return x509.UniformResourceIdentifier(value)
    return x509.OtherName(UPN_OID, core.UTF8String(value).dump())


def san_text(name: x509.GeneralName) -> str:
    """A SAN as `parse_san` reads it; a kind it cannot read is written other:<repr>."""
    if isinstance(name, x509.DNSName):
        return f"dns:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"ip:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"uri:{name.value}"
    if isinstance(name, x509.OtherName) and name.type_id == UPN_OID:
        return f"upn:{core.UTF8String.load(name.value).native}"
    return f"other:{name!r}"


def canonical_san(text: str) -> str:
    """`text` as `san_text` writes the name it means (DNS:X -> dns:X, an IPv6 address
    compressed); ValueError when it is not a SAN."""
    return san_text(parse_san(text))


KEY_USAGE_NAMES = (
    "digitalSignature",
    "contentCommitment",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
    "keyCertSign",
    "cRLSign",
)

EKU_NAMES = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsecIKE": ExtendedKeyUsageOID.IPSEC_IKE,
    "ipsecIKEIntermediate": ObjectIdentifier("1.3.6.1.5.5.8.2.2"),
    "smartcardLogon": ExtendedKeyUsageOID.SMARTCARD_LOGON,
}


def key_usage_extension(names: set[str]) -> x509.KeyUsage:
    unknown = names - set(KEY_USAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown key usage {sorted(unknown)}; known: {', '.join(KEY_USAGE_NAMES)}")
    return x509.KeyUsage(
        digital_signature="digitalSignature" in names,
        content_commitment="contentCommitment" in names,
        key_encipherment="keyEncipherment" in names,
        data_encipherment="dataEncipherment" in names,
        key_agreement="keyAgreement" in names,
        key_cert_sign="keyCertSign" in names,
        crl_sign="cRLSign" in names,
        encipher_only=False,
        decipher_only=False,
    )


def key_usage_names(ku: x509.KeyUsage | None) -> set[str]:
    """The names of the usages `ku` grants; none for no extension."""
    if ku is None:
        return set()
    flags = (
        ku.digital_signature,
        ku.content_commitment,
        ku.key_encipherment,
        ku.data_encipherment,
        ku.key_agreement,
        ku.key_cert_sign,
        ku.crl_sign,
    )
    return {name for name, granted in zip(KEY_USAGE_NAMES, flags, strict=True) if granted}


def eku_oid(name: str) -> ObjectIdentifier:
    """The OID an extended key usage name (or a dotted OID) stands for."""
    if name in EKU_NAMES:
        return EKU_NAMES[name]
    try:
        return ObjectIdentifier(name)
    except ValueError:
        raise ValueError(f"unknown extended key usage {name!r}; use one of {sorted(EKU_NAMES)} or an OID") from None
