"""GetCACaps (RFC 8894 section 3.5.2): the capability keywords and their wire format."""

from __future__ import annotations

# What this implementation can do, in the order we advertise it.
SERVER_CAPABILITIES = (
    "POSTPKIOperation",
    "Renewal",
    "SHA-1",
    "SHA-256",
    "SHA-512",
    "AES",
    "DES3",
    "SCEPStandard",
)


def format_caps(capabilities: tuple[str, ...] | list[str]) -> bytes:
    """One keyword a line, CRLF-terminated, as NDES answers."""
    return "".join(f"{c}\r\n" for c in capabilities).encode("ascii")


def parse_caps(body: bytes) -> frozenset[str]:
    """Keywords compared case-insensitively, as RFC 8894 asks of clients (upper-cased here)."""
    text = body.decode("ascii", errors="replace")
    return frozenset(line.strip().upper() for line in text.splitlines() if line.strip())
