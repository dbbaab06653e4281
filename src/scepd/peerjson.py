"""JSON from peers (API callers, MDM challenges, remote registration points, webhooks), read
with a size and a nesting limit that are checked before the parser runs.

Python's json recurses once per level of nesting and raises RecursionError near 1,000 levels:
a 3 KiB document of brackets would surface as a bug instead of a refusal, and an MDM
challenge needs no credentials to reach the parser. So the nesting is measured first, by a
linear scan of the brackets outside strings, and json.loads only sees what passed.
May import: the standard library only.
"""

from __future__ import annotations

import json
import re

# Every document scepd reads is at most 4 deep (Intune's {"request": {...}}, a JOSE header
# with its "epk" object, a challenge's claims with "req" and its lists); 32 leaves room.
MAX_DEPTH = 32

# A string literal with its escapes (unrolled, so that matching is linear), and a bracket.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class JsonRefused(ValueError):
    """The document is too large or nested too deep; the message says which and the limit."""


def nesting_depth(text: str, stop_above: int | None = None) -> int:
    """How deep the arrays and objects of `text` nest (0 for a scalar), counting as far as
    `stop_above` + 1 at most. Brackets inside strings do not count."""
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub('""', text)):
        if bracket.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        else:
            depth -= 1
    return deepest


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH):
    """json.loads, refusing with JsonRefused a document over `max_bytes` or nested deeper
    than `max_depth`; malformed JSON raises ValueError as json.loads does."""
    size = len(data) if isinstance(data, (bytes, bytearray)) else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise JsonRefused(f"the JSON document has {size} bytes, more than the {max_bytes} allowed")
    if isinstance(data, (bytes, bytearray)):
        # As json.loads does it: UTF-8, or UTF-16/32 recognised by their leading bytes.
        data = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
    if nesting_depth(data, max_depth) > max_depth:
        raise JsonRefused(f"the JSON document nests deeper than {max_depth} levels")
    return json.loads(data)


__all__ = ["MAX_DEPTH", "JsonRefused", "loads", "nesting_depth"]
