"""GetCACaps, GetCACert and GetNextCACert: answers that never change for a set of keys, so
they are built once when the service is."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.ca.keys import KeyPair
from scepd.protocol import signed
from scepd.protocol.caps import SERVER_CAPABILITIES, format_caps
from scepd.service.outcome import CA_CERT, CA_RA_CERT


class CaCertificates:
    def __init__(self, *, offered: list[x509.Certificate], ca: x509.Certificate, ra: KeyPair,
                 overlapping: bool, next_certificates: list[x509.Certificate]) -> None:
        """`offered`: what GetCACert sends (RA, issuing CA and the chain above it up to the
        root, CAs in their overlap); `overlapping`: earlier CAs are still offered;
        `next_certificates`: the next RA and CA (and its chain) during a rollover. Anything
        beyond one CA that is its own RA answers with certs-only."""
        self.ca_caps = format_caps(SERVER_CAPABILITIES + (("GetNextCACert",) if next_certificates else ()))
        if ra.certificate == ca and not overlapping and offered == [ca]:
            self.ca_certs = (CA_CERT, ca.public_bytes(Encoding.DER))  # no RA
        else:
            self.ca_certs = (CA_RA_CERT, signed.build_certs_only(offered))
        # GetNextCACert (RFC 8894 3.5.3): certs-only inside a SignedData signed by the current
        # RA, so that clients can trust what they are offered.
        self.next_ca_certs = (
            signed.build_signed_data(signed.build_certs_only(next_certificates), ra.certificate, ra.key, "sha256", [])
            if next_certificates else None
        )
