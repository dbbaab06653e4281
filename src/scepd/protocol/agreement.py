"""Ephemeral-static ECDH key agreement (RFC 5753 KeyAgreeRecipientInfo): how the content
key of an envelope reaches an EC recipient, in both directions.

The X9.63 KDF over ECC-CMS-SharedInfo derives the key-encryption key, which AES-wraps the
content key (RFC 3394, or RFC 5649 for single DES's 8 bytes).
May import: asn1crypto, cryptography and scepd.protocol's certificates, errors, signatures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from asn1crypto import cms, core
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scepd.protocol import signatures
from scepd.protocol.certificates import issuer_and_serial
from scepd.protocol.errors import decryption_failed, unsupported


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


@dataclass(frozen=True)
class Agreement:
    """A KeyAgreeRecipientInfo's ephemeral-static ECDH, read (RFC 5753)."""

    kdf_hash: str
    key_wrap: str  # a key of _KEY_WRAPS
    originator_point: bytes
    ukm: bytes | None


def agreement_of(kari: cms.KeyAgreeRecipientInfo) -> Agreement:
    """What a peer's KeyAgreeRecipientInfo agreed on; UnsupportedAlgorithm for any other scheme."""
    algorithm = kari["key_encryption_algorithm"]
    kdf_hash = _ECDH_SCHEMES.get(algorithm["algorithm"].dotted)
    if kdf_hash is None:
        raise unsupported(f"key agreement {algorithm['algorithm'].native}")
    key_wrap = algorithm["parameters"]["algorithm"].native
    if key_wrap not in _KEY_WRAPS:
        raise unsupported(f"key wrap {key_wrap}")
    originator = kari["originator"]
    if originator.name != "originator_key" or originator.chosen["algorithm"]["algorithm"].native != "ec":
        raise unsupported("key agreement with anything but an ephemeral EC key")
    ukm = kari["ukm"].native if kari["ukm"] else None
    return Agreement(kdf_hash, key_wrap, originator.chosen["public_key"].native, ukm)


def agreed_key(agreement: Agreement, key: ec.EllipticCurvePrivateKey, wrapped: bytes, size: int) -> bytes:
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
        raise decryption_failed() from None
    if len(cek) != size:
        raise decryption_failed()
    return cek


@functools.lru_cache(maxsize=64)
def _shared_info(key_wrap: str, ukm: bytes | None, kek_length: int) -> bytes:
    """DER ECC-CMS-SharedInfo: the key wrap (AES wraps take no parameters), the ukm, the KEK
    length in bits (RFC 5753 7.2)."""
    value = {"key_info": {"algorithm": key_wrap}, "supp_pub_info": (kek_length * 8).to_bytes(4, "big")}
    if ukm is not None:
        value["entity_u_info"] = ukm
    return _EccCmsSharedInfo(value).dump()


# The AES key wrap for each content-key length: as strong as the content cipher. RFC 3394
# wraps 16 bytes or more; single DES's 8 take RFC 5649's padded wrap.
_WRAP_FOR_KEY = {8: "aes128_wrap_pad", 16: "aes128_wrap", 24: "aes192_wrap", 32: "aes256_wrap"}


def key_agree_recipient_info(cek: bytes, recipient: x509.Certificate) -> cms.RecipientInfo:
    """A KeyAgreeRecipientInfo for `cek` to the EC `recipient` (RFC 5753 ephemeral-static ECDH):
    a fresh key on the recipient's curve, the X9.63 KDF with the hash that matches the curve's
    size, the AES key wrap that matches the content key's length, so the content cipher's
    strength (as OpenSSL and RFC 5008's suites pair them)."""
    public_key = recipient.public_key()
    key_wrap = _WRAP_FOR_KEY[len(cek)]
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
            "rid": issuer_and_serial(recipient, cms.KeyAgreementRecipientIdentifier),
            "encrypted_key": wrap(kek, cek),
        }],
    })
    return cms.RecipientInfo(name="kari", value=kari)
