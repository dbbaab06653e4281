"""The one source of the current time: every component that reads it takes a `Clock`.

`SYSTEM_CLOCK` is the wall clock; `FixedClock` stands still until advanced, so that a test can
put the server years ahead (a certificate expired, a challenge stale, a CRL due) without
sleeping or patching modules. protocol/ reads no clock: its callers pass `now` in.
May import: the standard library only (every layer may import it).
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def __repr__(self) -> str:
        return "SYSTEM_CLOCK"


SYSTEM_CLOCK: Clock = SystemClock()


class FixedClock:
    """A clock that reads `at` until `advance` or `set` moves it. Thread-safe: the server
    reads it from its worker threads while a test moves it."""

    def __init__(self, at: dt.datetime) -> None:
        self._at = _aware_utc(at)
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._at

    def advance(self, by: dt.timedelta) -> dt.datetime:
        """Move the clock on by `by` (back, if negative); the new time."""
        with self._lock:
            self._at += by
            return self._at

    def set(self, at: dt.datetime) -> None:
        with self._lock:
            self._at = _aware_utc(at)

    def __repr__(self) -> str:
        return f"FixedClock({self._at.isoformat()})"


def _aware_utc(at: dt.datetime) -> dt.datetime:
    # A naive time would be read as local time by some callers and as UTC by others.
    if at.tzinfo is None:
        raise ValueError("a clock reads aware datetimes; pass tzinfo=datetime.timezone.utc")
    return at.astimezone(dt.timezone.utc)
