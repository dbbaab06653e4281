"""SCEP (RFC 8894) and the CMS structures it is made of, sans-I/O.

This package owns the wire format: pkiMessages (SignedData carrying the SCEP signed
attributes around an EnvelopedData), CertRep, degenerate certs-only SignedData, PKCS#10
requests (including the non-standard ones real devices send) and the GetCACaps vocabulary.
Bytes go in, typed objects come out, and back. It performs no HTTP, touches no database and
reads no configuration; it may import only asn1crypto, cryptography and the standard library,
never another package of scepd. Errors in what a peer sent are raised as `ProtocolError`
carrying the SCEP failInfo that describes them, so the caller can answer with a CertRep.
"""

from scepd.protocol.types import FailInfo, MessageType, PkiStatus, ProtocolError

__all__ = ["FailInfo", "MessageType", "PkiStatus", "ProtocolError"]
