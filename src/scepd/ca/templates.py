"""Certificate templates (as ADCS has them) and NDES's choice of template by key usage.

A template says what an issued certificate looks like (validity, key usage, EKUs, hash),
which requests qualify (key types and sizes, subject and SAN rules), whether issuance waits
for an administrator, and how renewal works. NDES picks one of three templates from the key
usage the request asks for; `TemplateMapping` does the same with NDES's names.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scepd.protocol.csr import CertificationRequest
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.protocol.names import eku_oid, key_usage_extension, key_usage_names, san_text

EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")

# SHA-1 certificate signatures are refused by cryptography and by every modern verifier.
CERTIFICATE_HASHES = ("sha256", "sha384", "sha512")

DEFAULT_TEMPLATE = "IPSECIntermediateOffline"


def _one_of(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(allowed)}, not {value!r}")


@dataclass(frozen=True)
class Template:
    name: str = DEFAULT_TEMPLATE
    validity_days: int = 365
    hash: str = "sha256"
    key_usage: tuple[str, ...] = ("digitalSignature", "keyEncipherment")
    extended_key_usage: tuple[str, ...] = ("clientAuth",)
    key_types: tuple[str, ...] = ("rsa", "ec")
    min_rsa_bits: int = 2048
    ec_curves: tuple[str, ...] = ("secp256r1", "secp384r1")
    subject: str = "copy"  # copy: as requested (may be empty with a SAN); require: must not be empty
    san: str = "copy"  # copy | require | forbid
    approval: str = "auto"  # auto | manual (PENDING until `scepd requests approve`)
    renewal: bool = True
    renewal_window_days: int = 0  # 0: renew any time before expiry; N: only in the last N days
    revoke_on_renewal: bool = False  # revoke the renewed certificate (superseded)
    ca: str = "active"  # which CA issues: the active one, or a configured CA by key id (hex SKI)

    def __post_init__(self) -> None:
        # Fail when the configuration is loaded, not at the first request.
        key_usage_extension(set(self.key_usage))
        for name in self.extended_key_usage:
            eku_oid(name)
        _one_of("hash", self.hash, CERTIFICATE_HASHES)
        for kind in self.key_types:
            _one_of("key_types", kind, ("rsa", "ec"))
        for curve in self.ec_curves:
            _one_of("ec_curves", curve, EC_CURVES)
        _one_of("subject", self.subject, ("copy", "require"))
        _one_of("san", self.san, ("copy", "require", "forbid"))
        _one_of("approval", self.approval, ("auto", "manual"))
        if self.validity_days < 1:
            raise ValueError("validity_days must be at least 1")
        if self.renewal_window_days < 0:
            raise ValueError("renewal_window_days must not be negative")

    def key_usages_for(self, public_key) -> set[str]:
        """The key usages a certificate for `public_key` gets: encipherment is meaningless
        for an EC key and left out."""
        usages = set(self.key_usage)
        if not isinstance(public_key, rsa.RSAPublicKey):
            usages -= {"keyEncipherment", "dataEncipherment"}
        return usages

    def check(self, request: CertificationRequest) -> Refusal | None:
        """Does this request qualify for this template?"""
        key = request.public_key
        kind = "rsa" if isinstance(key, rsa.RSAPublicKey) else "ec"
        if kind not in self.key_types:
            return Refusal(ErrorCode.KEY_TYPE_NOT_ALLOWED, f"template {self.name} does not accept {kind.upper()} keys")
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < self.min_rsa_bits:
            return Refusal(
                ErrorCode.KEY_TOO_WEAK,
                f"RSA-{key.key_size} is below the minimum of {self.min_rsa_bits} bits (template {self.name})",
            )
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in self.ec_curves:
            return Refusal(
                ErrorCode.KEY_TYPE_NOT_ALLOWED,
                f"EC curve {key.curve.name} is not allowed (template {self.name}: {', '.join(self.ec_curves)})",
            )
        sans = request.subject_alternative_names
        if len(request.subject) == 0 and (self.subject == "require" or not sans):
            return Refusal(ErrorCode.SUBJECT_INVALID, f"the request has no subject name (template {self.name})")
        if self.san == "require" and not sans:
            return Refusal(ErrorCode.SUBJECT_INVALID, f"template {self.name} requires a subjectAltName")
        if self.san == "forbid" and sans:
            return Refusal(ErrorCode.SUBJECT_INVALID, f"template {self.name} does not allow subjectAltNames")
        return None


def _extension(cert: x509.Certificate, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def widened_identity(old: x509.Certificate, old_template: str, request: CertificationRequest, template: Template) -> list[str]:
    """What a renewal of `old` (issued from `old_template`) would get beyond what `old`
    holds, if `template` issued it for `request`; empty when nothing. A new key is not a
    widening, nor is asking for less (fewer SANs, usages or EKUs)."""
    wider = []
    if request.subject != old.subject:
        wider.append("subject")
    if template.name != old_template:
        wider.append(f"template {template.name} instead of {old_template}")
    san = _extension(old, x509.SubjectAlternativeName)
    held = list(san) if san is not None else []
    extra = [name for name in request.subject_alternative_names if name not in held]
    if extra:
        wider.append("subjectAltName " + ", ".join(san_text(n) for n in extra))
    ku = _extension(old, x509.KeyUsage)
    # What the template grants a key of the old certificate's type: a new key of another type
    # gets the usages that type can have (an EC certificate renewed with an RSA key may encipher),
    # which is not a wider identity; a template changed to grant more is.
    more_usages = template.key_usages_for(old.public_key()) - key_usage_names(ku)
    if more_usages:
        wider.append("key usage " + ", ".join(sorted(more_usages)))
    eku = _extension(old, x509.ExtendedKeyUsage)
    more_ekus = {eku_oid(n) for n in template.extended_key_usage} - (set(eku) if eku is not None else set())
    if more_ekus:
        wider.append("extended key usage " + ", ".join(sorted(o.dotted_string for o in more_ekus)))
    return wider


BUILTIN_TEMPLATES: dict[str, Template] = {
    # NDES's default for all three purposes: IKE intermediate plus client authentication.
    DEFAULT_TEMPLATE: Template(
        name=DEFAULT_TEMPLATE,
        key_usage=("digitalSignature", "keyEncipherment"),
        extended_key_usage=("ipsecIKEIntermediate", "clientAuth"),
    ),
}


@dataclass(frozen=True)
class TemplateMapping:
    """NDES's registry values (HKLM\\SOFTWARE\\Microsoft\\Cryptography\\MSCEP), same names."""

    SignatureTemplate: str = DEFAULT_TEMPLATE
    EncryptionTemplate: str = DEFAULT_TEMPLATE
    GeneralPurposeTemplate: str = DEFAULT_TEMPLATE

    def purpose(self, request: CertificationRequest) -> str:
        """The mapping key the request's key usage selects, as NDES decides it."""
        ku = request.key_usage
        signs = bool(ku and ku.digital_signature)
        encrypts = bool(ku and ku.key_encipherment)
        if signs and not encrypts:
            return "SignatureTemplate"
        if encrypts and not signs:
            return "EncryptionTemplate"
        return "GeneralPurposeTemplate"

    def missing(self, templates: dict[str, Template]) -> list[tuple[str, str]]:
        """(mapping key, template name) for every key that names no existing template."""
        return [
            (key, getattr(self, key))
            for key in ("SignatureTemplate", "EncryptionTemplate", "GeneralPurposeTemplate")
            if getattr(self, key) not in templates
        ]
