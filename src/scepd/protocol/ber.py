"""BER from peers and DER of our own, with asn1crypto: the one place a peer's bytes are read.

asn1crypto reads most BER; what it refuses of valid BER is rewritten into the same value in
a form it reads (`readable_ber`), and read again (`read_ber`). Every decoding problem ends as
a ProtocolError (MessageUndecodable), never as a crash. `frozen` builds our own parts once,
`der_sequence`, `der_set_of` and `der_tagged` put our own structures together.
May import: asn1crypto and scepd.protocol.errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

from asn1crypto import cms, core
from asn1crypto import parser as asn1_parser

from scepd.protocol.errors import ErrorCode, ProtocolError, undecodable


def frozen(value: core.Asn1Value, **tagging) -> core.Asn1Value:
    """`value` as parsed from its own encoding. asn1crypto encodes a value built from Python
    values again (with everything built inside it) whenever its contents are read, and the
    parent it is put into reads them at once, then again at every level up; a parsed value
    hands out the bytes it holds. Building a structure bottom-up from frozen parts makes it
    cost one encoding instead of one per level.

    Frozen values are also what the cached parts of our messages are, shared by threads:
    embedding one reads its bytes and never its children (its first dump parses a CHOICE's
    alternative, done here), so threads never parse the same part at once."""
    parsed = type(value).load(value.dump(), **tagging)
    parsed.dump()
    return parsed


# DER of our own put together from encodings (asn1crypto's encoder writes each header): what
# asn1crypto writes for the same structure built from Python values, at a fraction of the
# cost. A SET OF's elements go in sorted by their encodings (X.690 11.6), as asn1crypto sorts.


def der_sequence(*encodings: bytes) -> bytes:
    """A SEQUENCE of these encodings, in order."""
    return asn1_parser.emit(0, 1, 16, b"".join(encodings))


def der_set_of(contents: bytes) -> bytes:
    """A SET OF around `contents`, its elements' encodings as given: sorted for our own DER,
    as sent when it is a peer's signed attributes whose signature is checked."""
    return asn1_parser.emit(0, 1, 17, contents)


def der_tagged(tag: int, contents: bytes) -> bytes:
    """A constructed [tag]: EXPLICIT around an encoding, or an IMPLICIT SET OF's contents."""
    return asn1_parser.emit(2, 1, tag, contents)


def load_content(der: bytes, *expected: str) -> tuple[str, core.Asn1Value]:
    """Parse a ContentInfo whose type is one of `expected`; return (type, content).
    Any decoding problem is a ProtocolError. asn1crypto parses lazily: read what you need of
    the content inside `read_ber`, so that BER it refuses can be read again rewritten."""
    with decoding(f"not a CMS {' or '.join(expected)}"):
        info = cms.ContentInfo.load(der)
        content_type = info["content_type"].native
        content = info["content"]
    if content_type not in expected:
        raise undecodable(f"expected CMS {' or '.join(expected)}, got {content_type}")
    return content_type, content


@contextlib.contextmanager
def decoding(what: str):
    """asn1crypto parses lazily, so a malformed part raises (ValueError, TypeError and
    others) only when it is reached: every read of a peer's structure happens in here and
    ends as a ProtocolError, never as a crash."""
    try:
        yield
    except ProtocolError:
        raise
    except Exception as exc:
        raise _Unreadable(ErrorCode.MESSAGE_UNDECODABLE, f"{what}: {exc}") from None


# --- BER from peers ---------------------------------------------------------------------
#
# Found by experiment (asn1crypto 1.5.1), valid BER that OpenSSL reads and asn1crypto refuses:
# - a string type's constructed form with a definite length (Go's go.mozilla.org/pkcs7 writes
#   encryptedContent so: "method should have been primitive, but constructed was found");
#   it reads the constructed form only with an indefinite length;
# - a CHOICE's alternative with an indefinite length (a SignerIdentifier, RecipientIdentifier,
#   KeyTransRecipientInfo or CertificateChoices): it parses the alternative again from its
#   header and contents, without the end-of-contents octets, and runs out of data.
# Indefinite-length SEQUENCEs elsewhere, and indefinite-length strings, it reads. So a peer's
# message is read as sent, and only when asn1crypto refuses it, once more rewritten into the
# same BER value in the form asn1crypto reads (`readable_ber`); DER never takes that path.


class _Unreadable(ProtocolError):
    """asn1crypto could not read a peer's structure (what `decoding` raises)."""


_T = TypeVar("_T")


def read_ber(data: bytes, what: str, read: Callable[[bytes], _T]) -> _T:
    """`read(data)`, reading a structure a peer sent with asn1crypto: every decoding error is
    a ProtocolError (MessageUndecodable: `what`), and BER that asn1crypto refuses is read again
    rewritten (see above). `read` must read all it needs: asn1crypto parses lazily."""

    def guarded(value: bytes) -> _T:
        with decoding(what):
            return read(value)

    return with_rewriting(data, guarded)


def with_rewriting(data: bytes, read: Callable[[bytes], _T]) -> _T:
    """`read(data)`, and when asn1crypto refuses it (`read` does its reading inside
    `decoding`), `read` of the same value rewritten; else the refusal of the bytes as sent."""
    try:
        return read(data)
    except _Unreadable as exc:
        refused = exc
    try:
        readable = readable_ber(data)
    except Exception:  # not BER at all (or nested too deeply)
        readable = data
    if readable != data:
        try:
            return read(readable)
        except _Unreadable:
            pass
    raise refused  # asn1crypto's reason about the bytes as sent


# Universal types whose constructed form is a series of OCTET STRING segments, the value
# being their contents one after another (X.690 8.7, 8.23.5): OCTET STRING, the restricted
# character strings, UTCTime and GeneralizedTime. (A BIT STRING's segments each carry an
# unused-bits octet; asn1crypto reads them in the indefinite form, which is kept.)
_SEGMENTED = frozenset({4, 12, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30})
_BIT_STRING, _OCTET_STRING, _SET = 3, 4, 17
# Deeper than anything a client writes (a certificate is about 10 levels); bounds the work a
# hostile message can ask for.
_MAX_NESTING = 64


# asn1crypto.parser.parse reads the first element of the bytes it is given: each element is
# parsed from a window of the rest, so that many small ones cost linear time, not a copy of
# the rest each; one longer than the window is parsed from the whole rest.
_WINDOW = 512


def elements(contents: bytes) -> list[tuple]:
    """The (class, method, tag, header, contents, trailer) of each element in `contents`."""
    found = []
    pointer = 0
    while pointer < len(contents):
        try:
            element = asn1_parser.parse(contents[pointer:pointer + _WINDOW])
        except ValueError:
            element = asn1_parser.parse(contents[pointer:])
        found.append(element)
        pointer += len(element[3]) + len(element[4]) + len(element[5])
    return found


def _encoding(element: tuple) -> bytes:
    return element[3] + element[4] + element[5]


def readable_ber(data: bytes, *, der: bool = False) -> bytes:
    """The BER value `data` encodes, written the way asn1crypto reads it: every element
    with a definite length, except a context- or application-tagged one made of OCTET
    STRINGs (an IMPLICIT OCTET STRING in segments, or an EXPLICIT one: the same bytes, which
    only a schema tells apart), which gets an indefinite length; universal strings sent in
    segments become primitive. (A DER certificate has no such tagged element outside its
    extensions' values, which are OCTET STRINGs: it keeps its bytes.)
    With `der`, the DER encoding instead, for values that are made of universal types and
    definite-length tagged ones (what signed attributes are): definite lengths, primitive
    strings, SET OF elements sorted. Elements that need no change keep their bytes."""
    element = asn1_parser.parse(data)
    rewritten = _rewritten(element, der, 0)
    return _encoding(element) if rewritten is None else rewritten


def _rewritten(element: tuple, der: bool, depth: int) -> bytes | None:
    """`element` as `readable_ber` writes it, or None when it is written so already."""
    class_, constructed, tag, _, contents, trailer = element
    if not constructed:
        return None
    if depth > _MAX_NESTING:
        raise ValueError(f"nested more than {_MAX_NESTING} levels deep")
    if class_ == 0 and tag == _BIT_STRING:
        return None
    children = elements(contents)
    if class_ == 0 and tag in _SEGMENTED:
        value = _segments_value(children, tag, depth + 1)
        return None if value is None else asn1_parser.emit(0, 0, tag, value)
    rewritten = [_rewritten(child, der, depth + 1) for child in children]
    parts = [_encoding(child) if new is None else new for child, new in zip(children, rewritten, strict=True)]
    changed = any(new is not None for new in rewritten)
    if der and class_ == 0 and tag == _SET:
        ordered = sorted(parts)
        changed, parts = changed or ordered != parts, ordered
    segments = children and all(c[0] == 0 and c[2] == _OCTET_STRING for c in children)
    if not der and class_ != 0 and segments:
        if trailer and not changed:
            return None
        identifier = asn1_parser.emit(class_, 1, tag, b"")[:-1]  # without its (zero) length
        return identifier + b"\x80" + b"".join(parts) + b"\x00\x00"
    if not trailer and not changed:
        return None
    return asn1_parser.emit(class_, 1, tag, b"".join(parts))


def _segments_value(children: list[tuple], tag: int, depth: int) -> bytes | None:
    """The value of a string sent as these segments, or None when they are not segments."""
    value = []
    for class_, constructed, child_tag, _, contents, _ in children:
        if class_ != 0 or child_tag not in (_OCTET_STRING, tag):
            return None
        if constructed:
            if depth > _MAX_NESTING:
                raise ValueError(f"nested more than {_MAX_NESTING} levels deep")
            contents = _segments_value(elements(contents), tag, depth + 1)
            if contents is None:
                return None
        value.append(contents)
    return b"".join(value)
