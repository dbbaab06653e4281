"""SCEP (RFC 8894) and the CMS structures it is made of, sans-I/O.

This package owns the wire format: pkiMessages (SignedData carrying the SCEP signed
attributes around an EnvelopedData), CertRep, degenerate certs-only SignedData, PKCS#10
requests (including the non-standard ones real devices send), the GetCACaps vocabulary and
the one error vocabulary of scepd. Bytes go in, typed objects come out, and back:
`requests.open_request` turns a PKIOperation into a typed request (or a `Refused`), and
`message.build_cert_rep` writes the reply to its `Exchange`. It performs no HTTP, touches
no database, reads no configuration and no clock (the time is an argument).

The modules, lowest first: types (SCEP values), errors (ErrorCode, Refusal, ProtocolError),
signatures, certificates (asn1crypto's view, CMS identifiers), ber (reading a peer's BER),
agreement (ECDH KeyAgreeRecipientInfo), enveloped (EnvelopedData), signed (SignedData,
certs-only), csr (PKCS#10), message (pkiMessage, Exchange, CertRep), requests (open_request),
and beside them caps, fingerprints and names. What a peer sent wrong is raised inside as a
`ProtocolError` carrying its ErrorCode, and handed out by `open_request` as a `Refusal`.
May import: asn1crypto, cryptography and the standard library; no other package of scepd.
"""

from scepd.protocol.errors import ProtocolError
from scepd.protocol.types import FailInfo, MessageType, PkiStatus

__all__ = ["FailInfo", "MessageType", "PkiStatus", "ProtocolError"]
