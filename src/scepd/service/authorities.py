"""Our own keys as the deciders see them: which CA issues, which certificates are ours, what
requests are encrypted to, and the names no device may take."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from scepd.ca.authority import CertificateAuthority
from scepd.ca.keys import KeyPair
from scepd.ca.templates import Template


class Authorities:
    """The CAs and RAs of one instance, looked up by the deciders."""

    def __init__(self, *, ca: CertificateAuthority, ra: KeyPair, all_cas: tuple[CertificateAuthority, ...],
                 all_ras: tuple[KeyPair, ...]) -> None:
        self.ca = ca
        self.ra = ra
        self.all_cas = all_cas
        # What a signer or a recipient may be: every CA and RA still in use.
        self.known = tuple(c.certificate for c in all_cas) + tuple(r.certificate for r in all_ras)
        self.recipients = [(r.certificate, r.key) for r in all_ras]
        # Some clients encrypt to the CA certificate when they see one; accept that too.
        self.recipients += [(c.certificate, c.pair.key) for c in all_cas if isinstance(c.pair.key, rsa.RSAPrivateKey)]
        # Names no device may take: a certificate with our CA's name could pass for it.
        self.own_names = frozenset(c.certificate.subject for c in all_cas) | {r.certificate.subject for r in all_ras}

    def ca_for_key_id(self, key_id: str) -> CertificateAuthority | None:
        return next((ca for ca in self.all_cas if ca.key_id == key_id), None)

    def issuer_for(self, template: Template) -> CertificateAuthority | None:
        """The active CA, or the one the template pins by key id (during a rollover overlap,
        a template may keep issuing from the previous CA)."""
        return self.ca if template.ca == "active" else self.ca_for_key_id(template.ca)

    def issued(self, certificate: x509.Certificate) -> bool:
        """Did one of our CAs sign `certificate`?"""
        return any(ca.issued(certificate) for ca in self.all_cas)
