"""scepd's Prometheus metrics, each defined once here and counted where its outcome is known:
SCEP requests in server/scep.py (the one place that knows the operation, its result and its
error code), the registration point's phases where wiring wraps the validator and the
delivery gate, Intune's calls in intune/, notification deliveries in notifications.py, the
store's outages where StoreUnavailable is raised (store/store.py).

What a scrape reads from the store or the keys (the queue's depth, CRL age, days to expiry)
is not kept here but computed when scraped (server/metrics.py), by whichever worker answers.

With `scepd serve --workers N` every worker writes its counters to files in one directory
(prometheus-client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR set by the supervising
process before the workers start) and a scrape answered by any worker sums them.

Labels take values from fixed sets only (operations, results, error codes, phases): a value
a peer chose (an unknown `operation=`) is counted as "other", so that no client can grow
the number of series.
May import: prometheus_client and the standard library only (like scepd.clock, every layer
but protocol/ may use it).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# SCEP operations, with PKIOperation's message types under their RFC 8894 names.
OPERATIONS = frozenset({"GetCACaps", "GetCACert", "GetNextCACert", "PKIOperation",
                        "PKCSReq", "RenewalReq", "CertPoll", "GetCert", "GetCRL"})
_MESSAGE_TYPES = {"PKCS_REQ": "PKCSReq", "RENEWAL_REQ": "RenewalReq", "CERT_POLL": "CertPoll",
                  "GET_CERT": "GetCert", "GET_CRL": "GetCRL"}

# An enrollment takes milliseconds locally and up to a remote registration point's timeout.
_SECONDS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("scepd_scep_requests", "SCEP requests answered, by operation, result and error code",
                   ["operation", "result", "code"])
REQUEST_SECONDS = Histogram("scepd_scep_request_duration_seconds", "Time to answer a SCEP request, by operation",
                            ["operation"], buckets=_SECONDS)
PHASE_SECONDS = Histogram(
    "scepd_registration_point_duration_seconds",
    "The registration point's phases (validation, notification) and Intune's calls (intune_token, "
    "intune_discovery, intune_validateRequest, ...), by result (ok, refused, unavailable)",
    ["phase", "result"], buckets=_SECONDS)
DELIVERIES = Counter("scepd_notification_deliveries", "Notification delivery attempts, by result "
                     "(delivered, failed: retried later, gave_up: no attempts left)", ["result"])
STORE_UNAVAILABLE = Counter("scepd_store_unavailable", "Times the database could not do its part "
                            "(StoreUnavailable: locked past busy_timeout, full, unreachable)")
# A live gauge: a worker that exits takes its requests in progress with it.
IN_PROGRESS = Gauge("scepd_scep_requests_in_progress", "SCEP requests being answered", multiprocess_mode="livesum")
STARTED = Gauge("scepd_start_time_seconds", "When the oldest running worker started (Unix time)",
                multiprocess_mode="livemin")
STARTED.set(time.time())


def operation_label(operation: str, message_type: str | None) -> str:
    """The `operation` label of a request: PKIOperation's message type when it was read."""
    if message_type:
        return _MESSAGE_TYPES.get(message_type, "other")
    return operation if operation in OPERATIONS else "other"


def count_request(operation: str, result: str, code: str, seconds: float) -> None:
    """One SCEP request answered: `result` success, failure or pending, `code` the ErrorCode's
    value ("" for none)."""
    REQUESTS.labels(operation, result, code).inc()
    REQUEST_SECONDS.labels(operation).observe(seconds)


@contextmanager
def timed_phase(phase: str):
    """Time a registration point phase; the body sets `outcome["result"]` when it is not "ok",
    and an exception counts as "unavailable"."""
    outcome = {"result": "ok"}
    started = time.perf_counter()
    try:
        yield outcome
    except BaseException:
        outcome["result"] = "unavailable"
        raise
    finally:
        PHASE_SECONDS.labels(phase, outcome["result"]).observe(time.perf_counter() - started)


def multiprocess() -> bool:
    """Whether this process writes its metrics for a multiprocess scrape."""
    return bool(os.environ.get(MULTIPROCESS_ENV))


class TimedValidator:
    """A registration point (a ChallengeValidator) whose verdicts are timed as the phase
    "validation": ok, refused, or unavailable when it raised."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name

    def verify(self, request, uow):
        with timed_phase("validation") as timing:
            verdict = self.inner.verify(request, uow)
            if not verdict.accepted:
                timing["result"] = "refused"
        return verdict

    def readiness(self):
        return self.inner.readiness()


class TimedGate:
    """A delivery gate (Intune told before the CertRep) timed as the phase "notification"."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def delivered(self, record, certificate):
        with timed_phase("notification") as timing:
            refusal = self.inner.delivered(record, certificate)
            if refusal is not None:
                timing["result"] = "refused"
        return refusal

    def failed(self, transaction_id, csr_der, refusal) -> None:
        with timed_phase("failure_notification"):
            self.inner.failed(transaction_id, csr_der, refusal)
