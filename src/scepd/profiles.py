"""Enrollment profiles an MDM can push: an Apple `.mobileconfig` SCEP payload, and the same
settings as JSON for Android and other MDMs. Keys and structure follow Apple's
com.apple.security.scep payload (as in tests/vectors/apple-ios-pkcsreq/sceptest.mobileconfig).
May import: scepd.protocol (fingerprints and SAN names), cryptography.
"""

from __future__ import annotations

import plistlib
import uuid
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.protocol.fingerprints import certificate_sha1, certificate_sha256
from scepd.protocol.names import san_parts

# Apple's "Key Usage" bit mask: 1 signing, 4 encryption.
KEY_USAGE_BITS = {"digitalSignature": 1, "keyEncipherment": 4}

_SAN_KEYS = {"dns": "dNSName", "email": "rfc822Name", "uri": "uniformResourceIdentifier", "upn": "ntPrincipalName"}


@dataclass(frozen=True)
class ScepProfile:
    url: str
    ca_certificate: x509.Certificate
    subject: x509.Name
    challenge: str | None = None
    sans: tuple[str, ...] = ()
    key_size: int = 2048
    key_usage: tuple[str, ...] = ("digitalSignature", "keyEncipherment")
    name: str = "scepd"
    identifier: str = field(default_factory=lambda: f"org.scepd.profile.{uuid.uuid4()}")

    @property
    def ca_fingerprint_sha256(self) -> str:
        return certificate_sha256(self.ca_certificate)

    def _subject_array(self) -> list:
        # Apple wants [[["CN", "dev1"]], [["O", "Example"]]]: one array per RDN.
        short = {"2.5.4.3": "CN", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST",
                 "1.2.840.113549.1.9.1": "E", "2.5.4.5": "serialNumber"}
        return [[[short.get(a.oid.dotted_string, a.oid.dotted_string), str(a.value)] for a in rdn] for rdn in self.subject.rdns]

    def _san_dict(self) -> dict:
        out: dict[str, list[str]] = {}
        for san in self.sans:
            kind, value = san_parts(san)
            if kind not in _SAN_KEYS:
                raise ValueError(f"{san!r}: Apple profiles carry dns:, email:, uri: and upn: names")
            out.setdefault(_SAN_KEYS[kind], []).append(value)
        return {k: v[0] if k == "ntPrincipalName" else v for k, v in out.items()}

    def apple_payload(self) -> dict:
        content = {
            "URL": self.url,
            "Name": self.name,
            "Subject": self._subject_array(),
            "Keysize": self.key_size,
            "Key Type": "RSA",
            "Key Usage": sum(KEY_USAGE_BITS.get(k, 0) for k in self.key_usage),
            # Apple compares the fingerprint of the CA certificate from GetCACert with this.
            "CAFingerprint": certificate_sha1(self.ca_certificate),
            "Retries": 3,
            "RetryDelay": 10,
        }
        if self.challenge:
            content["Challenge"] = self.challenge
        if self.sans:
            content["SubjectAltName"] = self._san_dict()
        scep_uuid = str(uuid.uuid4()).upper()
        ca_uuid = str(uuid.uuid4()).upper()
        return {
            "PayloadContent": [
                {
                    "PayloadContent": content,
                    "PayloadDescription": "Enrolls a device certificate over SCEP",
                    "PayloadDisplayName": "SCEP",
                    "PayloadIdentifier": f"{self.identifier}.scep",
                    "PayloadType": "com.apple.security.scep",
                    "PayloadUUID": scep_uuid,
                    "PayloadVersion": 1,
                },
                {
                    "PayloadCertificateFileName": "ca.cer",
                    "PayloadContent": self.ca_certificate.public_bytes(Encoding.DER),
                    "PayloadDisplayName": self.ca_certificate.subject.rfc4514_string(),
                    "PayloadIdentifier": f"{self.identifier}.ca",
                    "PayloadType": "com.apple.security.root",
                    "PayloadUUID": ca_uuid,
                    "PayloadVersion": 1,
                },
            ],
            "PayloadDisplayName": f"{self.name} certificate enrollment",
            "PayloadIdentifier": self.identifier,
            "PayloadType": "Configuration",
            "PayloadUUID": str(uuid.uuid4()).upper(),
            "PayloadVersion": 1,
        }

    def mobileconfig(self) -> bytes:
        return plistlib.dumps(self.apple_payload(), fmt=plistlib.FMT_XML)

    def as_json(self) -> dict:
        """The same settings for Android Enterprise and other MDMs."""
        return {
            "scep_url": self.url,
            "subject": self.subject.rfc4514_string(),
            "subject_alt_names": list(self.sans),
            "challenge": self.challenge,
            "key_type": "RSA",
            "key_size": self.key_size,
            "key_usage": list(self.key_usage),
            "ca_certificate_pem": self.ca_certificate.public_bytes(Encoding.PEM).decode("ascii"),
            "ca_fingerprint_sha256": self.ca_fingerprint_sha256,
        }
