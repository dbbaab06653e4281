"""Telling the MDM and webhooks about every enrollment, after the response.

Notifications are queued in the store inside the enrollment's own transaction (a success is
told if and only if its certificate is recorded); a `Dispatcher` thread in each server
process delivers them: JSON POSTs signed with an HMAC-SHA256 header, retried with
exponential backoff, leased so that several servers never send one twice.
May import: scepd.store, scepd.challenge (remote: bearer tokens and the signature), scepd.metrics
(deliveries counted), httpx.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading

import httpx

from scepd import metrics
from scepd.challenge.remote import BearerToken, hmac_signature
from scepd.store import Store, StoreUnavailable

log = logging.getLogger("scepd.notifications")

MAX_BACKOFF = dt.timedelta(minutes=10)


def backoff(attempts: int) -> dt.timedelta:
    """1 s, 2 s, 4 s ... after each failed attempt, at most ten minutes."""
    return min(dt.timedelta(seconds=2**attempts), MAX_BACKOFF)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        *,
        hmac_secret: str = "",
        max_attempts: int = 8,
        tokens: dict[str, BearerToken] | None = None,
        timeout: float = 10.0,
        interval: float = 1.0,
    ) -> None:
        self.store = store
        self.hmac_secret = hmac_secret
        self.max_attempts = max_attempts
        self.tokens = tokens or {}  # URL prefix -> bearer token (the remote registration point)
        self.timeout = timeout
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _headers(self, target: str, body: bytes, kind: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Scepd-Event": kind}
        if self.hmac_secret:
            headers["X-Scepd-Signature"] = hmac_signature(self.hmac_secret, body)
        for prefix, token in self.tokens.items():
            if target.startswith(prefix):
                headers.update(token.header())
        return headers

    def run_once(self) -> int:
        """Attempt every due delivery once; the number attempted."""
        deliveries = self.store.claim_deliveries()
        for delivery in deliveries:
            body = json.dumps({"event": delivery.kind, "notification": json.loads(delivery.payload)}).encode("utf-8")
            error = None
            try:
                # Streamed and closed unread: only the status matters, and a target answering
                # gigabytes must not fill this process's memory.
                with httpx.stream("POST", delivery.target, content=body, timeout=self.timeout,
                                  headers=self._headers(delivery.target, body, delivery.kind)) as response:
                    if response.status_code // 100 != 2:
                        error = f"HTTP {response.status_code}"
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            attempts = delivery.attempts + 1
            retry = backoff(attempts) if error and attempts < self.max_attempts else None
            self.store.finish_delivery(delivery.id, error=error, retry_in=retry)
            metrics.DELIVERIES.labels("delivered" if error is None else "failed" if retry else "gave_up").inc()
            if error:
                fields = {"target": delivery.target, "attempts": attempts, "error": error, "gave_up": retry is None}
                log.warning("notification not delivered", extra={"fields": fields})
        return len(deliveries)

    def _loop(self) -> None:
        outage = None  # the store's fault while it lasts: one warning per outage, not per round
        while not self._stop.is_set():
            try:
                self.run_once()
                if outage is not None:
                    log.warning("notifications resumed: the database is available again")
                    outage = None
            except StoreUnavailable as exc:  # expected: locked or full; the queue waits in the store
                if outage is None:
                    log.warning("notifications paused: %s", exc.reason, extra={"fields": {"code": "StoreUnavailable"}})
                outage = exc
            except Exception:
                log.exception("notification round failed")
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scepd-notifications", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
