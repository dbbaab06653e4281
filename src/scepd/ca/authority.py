"""Issuing certificates: the root CA (or a subordinate's CSR), the RA certificate and
end-entity certificates."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID

from scepd.ca.keys import KeyPair
from scepd.ca.signing import sign_with
from scepd.ca.templates import Template
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol import signatures
from scepd.protocol.csr import CertificationRequest
from scepd.protocol.names import eku_oid, key_usage_extension

# Certificates are back-dated by this much so that a device whose clock runs a little
# slow does not reject a certificate that is "not yet valid".
BACKDATE = dt.timedelta(minutes=5)


def _ski(public_key) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _sign(builder: x509.CertificateBuilder, issuer: KeyPair | None, subject_key, hash_name: str):
    signer = issuer.key if issuer else subject_key
    return sign_with(builder, signer, signatures.hash_algorithm(hash_name))


def create_ca_request(subject: x509.Name, key, hash_name: str = "sha256") -> x509.CertificateSigningRequest:
    """The CSR of a CA under someone else's root: it asks for what create_root_ca gives
    itself (CA:TRUE, keyCertSign and cRLSign, digitalSignature for the responses the CA signs
    itself, such as OCSP); the root decides what it grants."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage_extension({"keyCertSign", "cRLSign", "digitalSignature"}), critical=True)
    )
    return sign_with(request, key, signatures.hash_algorithm(hash_name))


def create_root_ca(subject: x509.Name, key, validity_days: int = 3650, hash_name: str = "sha256",
                   clock: Clock = SYSTEM_CLOCK) -> x509.Certificate:
    now = clock.now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage_extension({"keyCertSign", "cRLSign", "digitalSignature"}), critical=True)
        .add_extension(_ski(key.public_key()), critical=False)
    )
    return _sign(builder, None, key, hash_name)


@dataclass
class CertificateAuthority:
    """An issuing CA whose key is loaded once.

    `crl_base_url` (such as http://scep.example/crl) makes every issued certificate carry
    the CRL distribution point `<crl_base_url>/<key_id>.crl`, where the server publishes it.
    `public_url` (such as http://scep.example) makes issued certificates, the RA's included,
    carry Authority Information Access: caIssuers `<public_url>/ca/<key_id>.crt` (this CA's
    certificate, which a relying party missing the issuing CA fetches) and, on what the store
    records, OCSP `<public_url>/ocsp`. `clock` dates what it issues.
    """

    pair: KeyPair
    crl_base_url: str | None = None
    clock: Clock = SYSTEM_CLOCK
    public_url: str | None = None
    _ski: x509.SubjectKeyIdentifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._ski = self.pair.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            self._ski = _ski(self.pair.certificate.public_key())

    @property
    def key_id(self) -> str:
        """Hex of the CA's subject key identifier: names its CRL and its certificates' issuer."""
        return self._ski.digest.hex()

    @property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski)

    @property
    def crl_url(self) -> str | None:
        return f"{self.crl_base_url.rstrip('/')}/{self.key_id}.crl" if self.crl_base_url else None

    @property
    def ca_issuers_url(self) -> str | None:
        return f"{self.public_url.rstrip('/')}/ca/{self.key_id}.crt" if self.public_url else None

    @property
    def ocsp_url(self) -> str | None:
        return f"{self.public_url.rstrip('/')}/ocsp" if self.public_url else None

    def _with_locations(self, builder: x509.CertificateBuilder, ocsp: bool = True) -> x509.CertificateBuilder:
        """Where relying parties find this CA's CRL, its certificate and (`ocsp`) its OCSP
        responder."""
        if self.crl_url:
            point = x509.DistributionPoint([x509.UniformResourceIdentifier(self.crl_url)], None, None, None)
            builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
        if self.public_url:
            access = [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                             x509.UniformResourceIdentifier(self.ca_issuers_url))]
            if ocsp:
                access.insert(0, x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                                        x509.UniformResourceIdentifier(self.ocsp_url)))
            builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
        return builder

    def issued(self, cert: x509.Certificate) -> bool:
        """Did this CA sign `cert`?"""
        if cert.issuer != self.certificate.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.certificate)
        except Exception:  # InvalidSignature, ValueError, TypeError: not ours either way
            return False
        return True

    @property
    def certificate(self) -> x509.Certificate:
        return self.pair.certificate

    def _builder(self, subject: x509.Name, public_key, validity: dt.timedelta) -> x509.CertificateBuilder:
        now = self.clock.now()
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
            .add_extension(self.authority_key_identifier, critical=False)
        )

    def issue_service_certificate(
        self, subject: x509.Name, public_key, key_usage: set[str], validity_days: int
    ) -> x509.Certificate:
        """A certificate for one of scepd's own keys (the RA, the registration point's
        encryption and signing keys): end entity, the given key usage, no EKU, and no OCSP
        URL (see `issue`'s `ocsp`)."""
        builder = (
            self._builder(subject, public_key, dt.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage_extension(key_usage), critical=True)
        )
        return _sign(self._with_locations(builder, ocsp=False), self.pair, None, "sha256")

    def issue_ra_certificate(self, subject: x509.Name, ra_key: rsa.RSAPrivateKey, validity_days: int = 730) -> x509.Certificate:
        """The RA certificate: RSA, digitalSignature (signs CertReps) + keyEncipherment (requests
        are encrypted to it; SCEP key transport is RSA-only, even under an EC CA)."""
        if not isinstance(ra_key, rsa.RSAPrivateKey):
            raise ValueError("the RA key must be RSA: SCEP clients encrypt to it with RSA key transport")
        return self.issue_service_certificate(
            subject, ra_key.public_key(), {"digitalSignature", "keyEncipherment"}, validity_days
        )

    def issue(self, request: CertificationRequest, template: Template, ocsp: bool = True) -> x509.Certificate:
        """Sign a certificate for a request that passed `template.check`. `ocsp`: it carries
        the OCSP URL, for what the store records. scepd's own certificates (RA, registration
        point, `--tls self`) are issued outside the store, often before it exists (`scepd init`,
        a database configured later), so the responder would answer `unknown` for them and a
        strict relying party would refuse: they go without the URL (caIssuers stays), which is
        simpler than recording them; a relying party checks them by the CRL instead."""
        usages = template.key_usages_for(request.public_key)
        builder = (
            self._builder(request.subject, request.public_key, dt.timedelta(days=template.validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage_extension(usages), critical=True)
        )
        if template.extended_key_usage:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([eku_oid(n) for n in template.extended_key_usage]), critical=False
            )
        builder = self._with_locations(builder, ocsp)
        sans = request.subject_alternative_names
        if sans:
            # RFC 5280 4.2.1.6: critical when the subject is empty.
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=len(request.subject) == 0)
        return _sign(builder, self.pair, None, template.hash)
