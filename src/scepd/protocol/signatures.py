"""Signature creation and checking shared by CMS SignerInfos and PKCS#10 requests.

Both carry an AlgorithmIdentifier that real clients fill inconsistently (plain
`rsaEncryption` with the hash given elsewhere, or `sha256WithRSAEncryption`), so the hash is
passed in explicitly and the key type decides the scheme.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from scepd.protocol.errors import unsupported

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    try:
        return HASHES[name]()
    except KeyError:
        raise unsupported(f"digest algorithm {name!r}") from None


def digest(name: str, data: bytes) -> bytes:
    h = hashes.Hash(hash_algorithm(name))
    h.update(data)
    return h.finalize()


def verify_signature(public_key, scheme: str, hash_name: str, data: bytes, signature: bytes) -> bool:
    """True when `signature` over `data` verifies. `scheme` is asn1crypto's signature_algo
    ('rsassa_pkcs1v15', 'rsassa_pss' or 'ecdsa')."""
    algorithm = hash_algorithm(hash_name)
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            if scheme == "rsassa_pss":
                pad = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO)
            else:
                pad = padding.PKCS1v15()
            public_key.verify(signature, data, pad, algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            raise unsupported(f"signatures by {type(public_key).__name__} keys")
    except InvalidSignature:
        return False
    return True


def sign(private_key, hash_name: str, data: bytes) -> bytes:
    algorithm = hash_algorithm(hash_name)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), algorithm)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(algorithm))
    raise TypeError(f"cannot sign with {type(private_key).__name__}")


def signature_algorithm_id(private_key, hash_name: str) -> dict:
    """The SignerInfo signatureAlgorithm for our own signatures.

    RSA signatures name plain `rsaEncryption`: strongSwan 5.9 accepts a CertRep only in
    that form, and every other client reads the hash from digestAlgorithm anyway.
    """
    if isinstance(private_key, rsa.RSAPrivateKey):
        return {"algorithm": "rsassa_pkcs1v15"}
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return {"algorithm": f"{hash_name}_ecdsa"}
    raise TypeError(f"cannot sign with {type(private_key).__name__}")
