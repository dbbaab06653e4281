"""Durations as scepd.toml and the APIs write them ('90s', '60m', '24h', '7d'), and the error
every configuration fault is raised as."""

from __future__ import annotations

import datetime as dt
import re


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and what is wrong."""


_DURATION = re.compile(r"^\s*([0-9]+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The longest duration a setting or an API request may name. Ten years is beyond every
# lifetime scepd deals in (a CRL's validity, a challenge's, a clock skew, a log search), and
# now plus or minus it stays far inside what datetime can hold: without a bound, "99999999999d"
# ends in OverflowError instead of a refusal.
MAX_DURATION = dt.timedelta(days=3650)


def parse_duration(text: str) -> dt.timedelta:
    """'90s', '60m', '24h', '7d'; at most MAX_DURATION (3650d), else ConfigError."""
    text = str(text)
    shown = repr(text if len(text) <= 40 else text[:40] + "...")  # it may come from an API request
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{shown} is not a duration (use a number and s, m, h or d, as in 60m)")
    digits, unit = match.groups()
    # Counted in whole seconds before any timedelta exists, so that no size of number overflows.
    seconds = int(digits) * _UNIT_SECONDS[unit] if len(digits) <= 12 else None
    if seconds is None or seconds > MAX_DURATION.total_seconds():
        raise ConfigError(f"{shown} is longer than the longest duration allowed, {MAX_DURATION.days}d (ten years)")
    return dt.timedelta(seconds=seconds)
