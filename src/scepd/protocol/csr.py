"""PKCS#10 certification requests as devices really send them.

Apple devices put version 2 in the CertificationRequestInfo (only 0 is defined), which
`cryptography` refuses to load. So the request is read in two steps, one path for every
request: asn1crypto parses it and the proof-of-possession signature is checked over the
original CertificationRequestInfo bytes; then a copy with the version normalised to 0 is
handed to `cryptography` for its typed view of the subject, extensions and attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from scepd.protocol import ber, signatures
from scepd.protocol.errors import ErrorCode, ProtocolError


@dataclass(frozen=True)
class CertificationRequest:
    der: bytes
    version: int
    subject: x509.Name
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    challenge_password: str | None
    extensions: x509.Extensions
    signature_hash: str = "sha256"  # of the proof-of-possession signature (the algorithm policy reads it)
    # The request without its challengePassword: what is stored (see without_challenge_password).
    without_challenge: bytes = field(default=b"", repr=False)

    def extension(self, oid: x509.ObjectIdentifier):
        try:
            return self.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            return None

    @property
    def subject_alternative_names(self) -> list[x509.GeneralName]:
        san = self.extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        return list(san) if san is not None else []

    @property
    def key_usage(self) -> x509.KeyUsage | None:
        return self.extension(ExtensionOID.KEY_USAGE)

    @property
    def key_description(self) -> str:
        key = self.public_key
        if isinstance(key, rsa.RSAPublicKey):
            return f"RSA-{key.key_size}"
        return f"EC {key.curve.name}"


def _malformed(reason: str) -> ProtocolError:
    return ProtocolError(ErrorCode.CSR_MALFORMED, f"the PKCS#10 request cannot be parsed: {reason}")


def _normalised(request: asn1_csr.CertificationRequest, version: int) -> bytes:
    """The request as `cryptography` will load it: version 0, and the attributes in DER
    (sorted) order. strongSwan 5.9 sends challengePassword and extensionRequest unsorted;
    the signature was already checked over the bytes as sent, so only the typed view is
    built from this copy, whose signature no longer matters."""
    info = request["certification_request_info"]
    attributes = list(info["attributes"])
    in_order = sorted(attributes, key=lambda a: a.dump())
    if version == 0 and [a.dump() for a in attributes] == [a.dump() for a in in_order]:
        return request.dump()
    copy = request.copy()
    copy["certification_request_info"]["version"] = 0
    copy["certification_request_info"]["attributes"] = asn1_csr.CRIAttributes(in_order)
    return copy.dump(force=True)


def _typed_view(der: bytes):
    loaded = x509.load_der_x509_csr(der)
    return loaded.public_key(), loaded.subject, loaded.extensions


def without_challenge_password(der: bytes) -> bytes:
    """The request with its challengePassword attribute removed: what is stored and told to
    webhooks, so that no challenge is kept in clear. Its signature no longer verifies (it
    covered the password), so a stored request is read with `parse_csr(..., verified=True)`;
    the same request always gives the same bytes, which is what recognises a resend.
    (`parse_csr` gives the same as `CertificationRequest.without_challenge`.)"""
    try:
        return _without_challenge(asn1_csr.CertificationRequest.load(der), der)
    except Exception as exc:
        raise _malformed(str(exc)) from None


def _without_challenge(request: asn1_csr.CertificationRequest, der: bytes) -> bytes:
    """`request` (parsed from `der`) without its challengePassword attributes, put together
    from the encodings of its parts as asn1crypto writes the same structure built from them
    (the parts as read, the attributes kept sorted as a DER SET OF is; test_protocol checks
    it byte for byte): a resend of a request stored by an earlier version is still known."""
    info = request["certification_request_info"]
    attributes = info["attributes"]
    kept = [a.dump() for a in attributes if a["type"].native != "challenge_password"]
    if len(kept) == len(attributes):
        return der
    stripped_info = ber.der_sequence(info["version"].dump(), info["subject"].dump(), info["subject_pk_info"].dump(),
                                     ber.der_tagged(0, b"".join(sorted(kept))))
    return ber.der_sequence(stripped_info, request["signature_algorithm"].dump(), request["signature"].dump())


def parse_csr(der: bytes, *, verified: bool = False) -> CertificationRequest:
    """Parse a PKCS#10 request and check its proof-of-possession signature.

    `verified`: the request was checked when it arrived and has been stored since (without
    its challengePassword, which breaks the signature): only its typed view is built."""
    try:
        request = asn1_csr.CertificationRequest.load(der)
        info = request["certification_request_info"]
        raw_version = info["version"].native
        version = 0 if raw_version == "v1" else int(raw_version)
        passwords = [
            attr["values"][0].native
            for attr in info["attributes"]
            if attr["type"].native == "challenge_password" and len(attr["values"])
        ]
        info_bytes = info.dump()
        stored = _without_challenge(request, der)
        scheme = request["signature_algorithm"].signature_algo
        hash_name = request["signature_algorithm"].hash_algo
        signature = request["signature"].native
    except Exception as exc:
        raise _malformed(str(exc)) from None
    try:
        public_key, subject, extensions = _typed_view(der)
    except Exception:
        # Version 2 (Apple) or unsorted attributes (strongSwan): cryptography wants DER.
        try:
            public_key, subject, extensions = _typed_view(_normalised(request, version))
        except Exception as exc:
            raise _malformed(str(exc)) from None
    if not isinstance(public_key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise ProtocolError(ErrorCode.KEY_TYPE_NOT_ALLOWED, f"{type(public_key).__name__} keys are not supported")

    if hash_name not in signatures.HASHES:
        raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, f"the PKCS#10 request is signed with {hash_name}")
    try:
        valid = verified or signatures.verify_signature(public_key, scheme, hash_name, info_bytes, signature)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(ErrorCode.CSR_MALFORMED, f"the PKCS#10 signature cannot be checked: {exc}") from None
    if not valid:
        raise ProtocolError(
            ErrorCode.CSR_SIGNATURE_INVALID,
            "the PKCS#10 signature does not verify with the request's own key (no proof of possession)",
        )

    return CertificationRequest(
        der=der,
        version=version,
        subject=subject,
        public_key=public_key,
        challenge_password=passwords[0] if passwords else None,
        extensions=extensions,
        signature_hash=hash_name,
        without_challenge=stored,
    )
