"""Issuing certificates: the root CA, the RA certificate and end-entity certificates."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from scepd.ca.keys import KeyPair
from scepd.errors import ErrorCode, Refusal
from scepd.protocol import signatures
from scepd.protocol.csr import CertificationRequest

# Certificates are back-dated by this much so that a device whose clock runs a little
# slow does not reject a certificate that is "not yet valid".
BACKDATE = dt.timedelta(minutes=5)

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

# SHA-1 certificate signatures are refused by cryptography and by every modern verifier.
CERTIFICATE_HASHES = ("sha256", "sha384", "sha512")

EC_CURVES = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1}


def _key_usage(names: set[str]) -> x509.KeyUsage:
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


def eku_oid(name: str) -> ObjectIdentifier:
    if name in EKU_NAMES:
        return EKU_NAMES[name]
    try:
        return ObjectIdentifier(name)
    except ValueError:
        raise ValueError(f"unknown extended key usage {name!r}; use one of {sorted(EKU_NAMES)} or an OID") from None


@dataclass(frozen=True)
class IssuancePolicy:
    """What an issued certificate looks like and which requests qualify (one default policy;
    named templates build on this)."""

    validity_days: int = 365
    hash: str = "sha256"
    key_usage: tuple[str, ...] = ("digitalSignature", "keyEncipherment")
    extended_key_usage: tuple[str, ...] = ("clientAuth",)
    min_rsa_bits: int = 2048
    ec_curves: tuple[str, ...] = ("secp256r1", "secp384r1")

    def __post_init__(self) -> None:
        # Fail at load time, not at the first request.
        _key_usage(set(self.key_usage))
        for name in self.extended_key_usage:
            eku_oid(name)
        if self.hash not in CERTIFICATE_HASHES:
            raise ValueError(f"hash {self.hash!r} is not one of {', '.join(CERTIFICATE_HASHES)}")
        unknown = set(self.ec_curves) - set(EC_CURVES)
        if unknown:
            raise ValueError(f"unknown EC curves {sorted(unknown)}; known: {', '.join(EC_CURVES)}")
        if self.validity_days < 1:
            raise ValueError("validity_days must be at least 1")

    def check(self, request: CertificationRequest) -> Refusal | None:
        key = request.public_key
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < self.min_rsa_bits:
                return Refusal(
                    ErrorCode.KEY_TOO_WEAK,
                    f"RSA-{key.key_size} is below the minimum of {self.min_rsa_bits} bits",
                )
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in self.ec_curves:
                return Refusal(
                    ErrorCode.KEY_TYPE_NOT_ALLOWED,
                    f"EC curve {key.curve.name} is not allowed (allowed: {', '.join(self.ec_curves)})",
                )
        if len(request.subject) == 0 and not request.subject_alternative_names:
            return Refusal(ErrorCode.SUBJECT_INVALID, "the request has neither a subject nor a subjectAltName")
        return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ski(public_key) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _sign(builder: x509.CertificateBuilder, issuer: KeyPair | None, subject_key, hash_name: str):
    signer = issuer.key if issuer else subject_key
    return builder.sign(signer, signatures.hash_algorithm(hash_name))


def create_root_ca(subject: x509.Name, key, validity_days: int = 3650, hash_name: str = "sha256") -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage({"keyCertSign", "cRLSign", "digitalSignature"}), critical=True)
        .add_extension(_ski(key.public_key()), critical=False)
    )
    return _sign(builder, None, key, hash_name)


@dataclass
class CertificateAuthority:
    """An issuing CA whose key is loaded once."""

    pair: KeyPair
    _aki: x509.AuthorityKeyIdentifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            ski = self.pair.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.pair.key.public_key())

    @property
    def certificate(self) -> x509.Certificate:
        return self.pair.certificate

    def _builder(self, subject: x509.Name, public_key, validity: dt.timedelta) -> x509.CertificateBuilder:
        now = _now()
        # Never past the CA's own end: a certificate outliving its issuer cannot be verified.
        not_after = min(now + validity, self.certificate.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())  # 159 random bits
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(_ski(public_key), critical=False)
            .add_extension(self._aki, critical=False)
        )

    def issue_ra_certificate(self, subject: x509.Name, ra_key: rsa.RSAPrivateKey, validity_days: int = 730) -> x509.Certificate:
        """The RA certificate: RSA, digitalSignature (signs CertReps) + keyEncipherment (requests
        are encrypted to it; SCEP key transport is RSA-only, even under an EC CA)."""
        if not isinstance(ra_key, rsa.RSAPrivateKey):
            raise ValueError("the RA key must be RSA: SCEP clients encrypt to it with RSA key transport")
        builder = (
            self._builder(subject, ra_key.public_key(), dt.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage({"digitalSignature", "keyEncipherment"}), critical=True)
        )
        return _sign(builder, self.pair, None, "sha256")

    def issue(self, request: CertificationRequest, policy: IssuancePolicy) -> x509.Certificate:
        """Sign a certificate for a request that passed `policy.check`."""
        usages = set(policy.key_usage)
        if not isinstance(request.public_key, rsa.RSAPublicKey):
            usages -= {"keyEncipherment", "dataEncipherment"}  # meaningless for EC keys
        builder = (
            self._builder(request.subject, request.public_key, dt.timedelta(days=policy.validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(usages), critical=True)
        )
        if policy.extended_key_usage:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([eku_oid(n) for n in policy.extended_key_usage]), critical=False
            )
        sans = request.subject_alternative_names
        if sans:
            # RFC 5280 4.2.1.6: critical when the subject is empty.
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=len(request.subject) == 0)
        return _sign(builder, self.pair, None, policy.hash)
