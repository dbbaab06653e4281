"""What the records and the request log say, for the console: certificates found by subject,
SAN, serial and state, with their details; the log's entries filtered (like `scepd logs`), each
failure with the remedy of its code; the last 24 hours of PKIOperations counted per hour and
by outcome (the overview's chart).

The log is the instance's JSON-lines file ([logging] file); only its last `TAIL_BYTES` are
read, so that a page stays quick on a log that was never rotated. The request log leaves out
the lines of the audit trail and of the console's sign-ins (`NOT_REQUESTS`): every signed-in
account reads the log, the audit trail is for operators (its own page), and a sign-in line
names the accounts that exist."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from scepd.protocol.errors import ERRORS, ErrorCode
from scepd.protocol.names import san_text
from scepd.store import CertificateRecord, CertificateState, Store, TransactionRecord, TransactionState

TAIL_BYTES = 16 * 1024 * 1024
SEARCHED = 5000  # the newest certificates a search looks through (SANs are read from their DER)
_SERIAL = re.compile(r"[0-9a-fA-F]{1,64}")
_REMEDIES = {code.value: info.remedy for code, info in ERRORS.items()}
NOT_REQUESTS = frozenset({"scepd.audit", "scepd.console"})  # loggers whose lines the request log leaves out


@dataclass(frozen=True)
class LogFilter:
    transaction_id: str = ""
    code: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    failures_only: bool = False

    def wants(self, entry: dict, at: dt.datetime) -> bool:
        if self.transaction_id and entry.get("transaction_id") != self.transaction_id:
            return False
        if self.code and entry.get("code") != self.code:
            return False
        if self.failures_only and not entry.get("code"):
            return False
        return (self.since is None or at >= self.since) and (self.until is None or at <= self.until)


@dataclass(frozen=True)
class LogEntry:
    at: dt.datetime
    fields: dict  # the line as logged: peers' strings among them, shown escaped
    remedy: str | None  # of its error code, when it has a known one


@dataclass(frozen=True)
class Hour:
    start: dt.datetime
    successes: int = 0
    pending: int = 0
    failures: Counter = field(default_factory=Counter)  # error code -> count

    @property
    def total(self) -> int:
        return self.successes + self.pending + sum(self.failures.values())


def _lines(path: Path | None) -> list[str]:
    if path is None or not path.is_file():
        return []
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL_BYTES))
        data = f.read()
    lines = data.split(b"\n")
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first is cut
    return [line.decode("utf-8", errors="replace") for line in lines]


def _parsed(text: str) -> tuple[dict, dt.datetime] | None:
    try:
        entry = json.loads(text)
        at = dt.datetime.fromisoformat(str(entry.get("ts", "")))
    except (ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or at.tzinfo is None:
        return None
    return entry, at


def read_log(path: Path | None, wanted: LogFilter, limit: int = 200) -> list[LogEntry]:
    """The newest `limit` entries of the log `wanted` lets through, newest first."""
    found = []
    for text in reversed(_lines(path)):
        parsed = _parsed(text)
        if parsed is None or parsed[0].get("logger") in NOT_REQUESTS or not wanted.wants(*parsed):
            continue
        entry, at = parsed
        found.append(LogEntry(at, entry, _REMEDIES.get(str(entry.get("code")))))
        if len(found) >= limit:
            break
    return found


def hourly(path: Path | None, now: dt.datetime, hours: int = 24) -> list[Hour]:
    """PKIOperations per hour over the last `hours` hours, oldest first: successes, pending
    answers and failures by error code."""
    first = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=hours - 1)
    buckets = [Hour(first + dt.timedelta(hours=i)) for i in range(hours)]
    counts = [[0, 0, Counter()] for _ in buckets]
    for text in _lines(path):
        parsed = _parsed(text)
        if parsed is None:
            continue
        entry, at = parsed
        if entry.get("operation") != "PKIOperation" or not first <= at <= now:
            continue
        slot = counts[int((at - first).total_seconds() // 3600)]
        if entry.get("code"):
            slot[2][str(entry["code"])] += 1
        elif entry.get("status") == "PENDING":
            slot[1] += 1
        elif entry.get("status") == "SUCCESS":
            slot[0] += 1
    return [Hour(b.start, s, p, f) for b, (s, p, f) in zip(buckets, counts, strict=True)]


def known_codes() -> list[str]:
    return [code.value for code in ErrorCode]


@dataclass(frozen=True)
class CertificateView:
    record: CertificateRecord
    sans: tuple[str, ...]
    certificate: x509.Certificate

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def sha1(self) -> str:
        return self.certificate.fingerprint(hashes.SHA1()).hex()  # what Windows shows as the thumbprint


def certificate_view(record: CertificateRecord) -> CertificateView:
    cert = x509.load_der_x509_certificate(record.der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(san_text(n) for n in names)
    except (x509.ExtensionNotFound, ValueError):
        sans = ()
    return CertificateView(record, sans, cert)


def find_certificates(store: Store, text: str = "", state: str = "", limit: int = 100) -> list[CertificateView]:
    """Certificates, newest first, whose subject, SAN or serial contains `text` (any case),
    in `state` when given; among the newest SEARCHED."""
    status = CertificateState(state) if state in CertificateState.__members__.values() else None
    needle = text.strip().lower()
    found = []
    for record in store.list_certificates(status, limit=SEARCHED if needle else limit):
        view = certificate_view(record)
        haystack = [record.subject, record.serial, *view.sans]
        if needle and not any(needle in part.lower() for part in haystack):
            continue
        found.append(view)
        if len(found) >= limit:
            break
    return found


def pending_requests(store: Store, limit: int = 500) -> list[TransactionRecord]:
    """The requests waiting for an operator, newest first."""
    return store.list_transactions(TransactionState.PENDING, limit=limit)


def find_certificate(store: Store, serial: str) -> CertificateRecord | None:
    """The certificate of a serial in hex (any case); None for no such serial or no hex."""
    return store.find_certificate(serial) if _SERIAL.fullmatch(serial) else None
