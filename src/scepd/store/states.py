"""The states a stored request and a stored certificate can be in, and the moves between them.

The values are the strings the database has always held ("pending", "valid", ...), so the
schema and the rows already stored are unchanged; as `str` enums they compare equal to those
strings (StrEnum), and a record read back carries the member.
"""

from __future__ import annotations

import enum


class TransactionState(enum.StrEnum):
    PENDING = "pending"  # waiting for an administrator (a template with approval = "manual")
    ISSUED = "issued"
    DENIED = "denied"


class CertificateState(enum.StrEnum):
    VALID = "valid"
    REVOKED = "revoked"


class NotificationKind(enum.StrEnum):
    """What a queued notification tells: an outcome of ours (sent to the webhooks and, in
    remote mode, the registration point), or one a SCEP server told this registration point."""

    SUCCESS = "success"
    FAILURE = "failure"
    RECEIVED_SUCCESS = "received-success"
    RECEIVED_FAILURE = "received-failure"

    @classmethod
    def received(cls, outcome: str) -> "NotificationKind":
        """The kind that records an `outcome` ("success" or "failure") notification a SCEP
        server sent to us; ValueError for any other outcome."""
        if outcome not in (cls.SUCCESS, cls.FAILURE):
            raise ValueError(f"no notification of outcome {outcome!r}; success or failure")
        return cls(f"received-{outcome}")


State = TransactionState | CertificateState

# Every allowed move. Issued, denied and revoked are final: a revoked certificate is never
# valid again, a decided request never reopens (a new request gets a new row instead).
TRANSITIONS: dict[State, frozenset[State]] = {
    TransactionState.PENDING: frozenset({TransactionState.ISSUED, TransactionState.DENIED}),
    TransactionState.ISSUED: frozenset(),
    TransactionState.DENIED: frozenset(),
    CertificateState.VALID: frozenset({CertificateState.REVOKED}),
    CertificateState.REVOKED: frozenset(),
}


class TransitionRefused(ValueError):
    """A move the table does not allow: a bug in the caller, not a bad request (a request
    decided by someone else first is a conditional UPDATE that changed nothing)."""


def allowed(old: State, new: State) -> bool:
    return new in TRANSITIONS[old]


def sources(new: State) -> tuple[State, ...]:
    """The states that may become `new` (what a conditional UPDATE to `new` requires of the
    row); TransitionRefused for a state that is only ever a starting one."""
    found = tuple(old for old, targets in TRANSITIONS.items() if new in targets)  # in table order: one SQL text
    if not found:
        raise TransitionRefused(f"no {type(new).__name__} becomes {new.value}: records start in it")
    return found


def check_transition(old: State, new: State) -> None:
    """Raise TransitionRefused unless `old` may become `new`."""
    if not allowed(old, new):
        raise TransitionRefused(f"{type(old).__name__} {old.value} cannot become {new.value}")
