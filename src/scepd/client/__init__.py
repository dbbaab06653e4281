"""The SCEP client used by the command line, the tests and the benchmark.

It speaks to any RFC 8894 server over HTTP (httpx): GetCACaps, GetCACert and PKCSReq by POST
or GET, then checks and opens the CertRep. Message construction is scepd.protocol's.
May import: scepd.protocol only (plus httpx and cryptography).
"""

from scepd.client.client import (
    EnrollmentResult,
    ScepClient,
    ScepClientError,
    build_csr,
)
from scepd.protocol.names import (
    parse_san,  # SANs as text (dns:NAME, ...), the protocol's one spelling
)

__all__ = ["EnrollmentResult", "ScepClient", "ScepClientError", "build_csr", "parse_san"]
