"""Keys in a PKCS#11 token: the URI that names one (RFC 7512), the PIN it points to, and one
logged-in session per token and process.

`pkcs11:token=scepd;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:SCEPD_PKCS11_PIN`
names the module to load, the token (by label, serial, manufacturer, model or slot), the key
object (by label and/or id) and where the user PIN is (pin-source env:NAME or file:PATH;
pin-value only for tests). Every module is loaded once per process and every token logged in
once; its sessions are used under the module's lock (a PKCS#11 session runs one operation
at a time, and re-initialising a module ends every session on it, so no other call may be
under way then). An operation that meets a dead session or token (removed, module
restarted) re-initialises the module and tries once more; failing that it raises
`KeyUnavailable`, which the server answers as the named refusal. A PIN the token refused is
not offered again until its source holds another value (an HSM locks the user PIN after a
few failures). The binding is python-pkcs11 (the `pkcs11` extra).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote, unquote_to_bytes

from scepd.protocol.errors import KeyUnavailable

SCHEME = "pkcs11:"
_PATH_ATTRIBUTES = ("token", "manufacturer", "serial", "model", "library-manufacturer", "library-description",
                    "library-version", "object", "type", "id", "slot-manufacturer", "slot-description", "slot-id")
_QUERY_ATTRIBUTES = ("pin-source", "pin-value", "module-name", "module-path")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Characters RFC 7512 lets stand unencoded in a value (pk11-pchar / pk11-qchar, less the separators).
_SAFE_PATH = "-._~!$'()*+,=:[]@&"
_SAFE_QUERY = "-._~!$'()*+,=:[]@/?|;"

T = TypeVar("T")


def is_pkcs11_uri(name: object) -> bool:
    return isinstance(name, str) and name[: len(SCHEME)].lower() == SCHEME


class Pkcs11UriError(ValueError):
    """A PKCS#11 URI that cannot be used; `attribute` names the part at fault."""

    def __init__(self, attribute: str, reason: str) -> None:
        super().__init__(f"PKCS#11 URI attribute {attribute!r}: {reason}")
        self.attribute = attribute
        self.reason = reason


class TokenError(Exception):
    """A token key that cannot be opened: `reason` says what failed, `fix` what mends it."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}. Fix: {fix}")
        self.reason = reason
        self.fix = fix


class PinRefused(TokenError):
    """The token refused the user PIN: the module is fine, the PIN is not."""


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed RFC 7512 URI: the path attributes (decoded) and the query attributes."""

    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Pkcs11Uri":
        if not is_pkcs11_uri(text):
            raise Pkcs11UriError("scheme", "a PKCS#11 URI starts with 'pkcs11:'")
        body = text[len(SCHEME):]
        path_part, _, query_part = body.partition("?")
        path = _attributes(path_part, ";", _PATH_ATTRIBUTES)
        query = _attributes(query_part, "&", _QUERY_ATTRIBUTES)
        if "type" in path and path["type"] != "private":
            raise Pkcs11UriError("type", f"{path['type']!r}: scepd names private keys (type=private, or leave it out)")
        if "module-name" in query:
            raise Pkcs11UriError("module-name", "give the module's file with module-path instead")
        if "module-path" not in query:
            raise Pkcs11UriError("module-path", "missing: name the PKCS#11 module, e.g. module-path=/usr/lib/softhsm/libsofthsm2.so")
        if "pin-source" in query and "pin-value" in query:
            raise Pkcs11UriError("pin-value", "give either pin-source or pin-value")
        source = query.get("pin-source")
        if source is not None and not (source.startswith("env:") and len(source) > 4 or source.startswith("file:") and len(source) > 5):
            raise Pkcs11UriError("pin-source", f"{source!r}: expected env:NAME or file:PATH")
        return cls(path, query)

    @property
    def module_path(self) -> str:
        return self.query["module-path"]

    @property
    def object(self) -> str | None:
        return self.path.get("object")

    @property
    def id(self) -> bytes | None:
        return unquote_to_bytes(self._raw_id) if self._raw_id is not None else None

    @property
    def _raw_id(self) -> str | None:
        return self.path.get("id")

    def with_object(self, label: str) -> "Pkcs11Uri":
        path = {k: v for k, v in self.path.items() if k not in ("object", "id", "type")}
        return replace(self, path={**path, "object": label})

    def token_key(self) -> tuple[str, ...]:
        """What identifies the token: the sessions of equal keys are one."""
        return (self.module_path, *(f"{k}={self.path[k]}" for k in sorted(self.path) if k not in ("object", "id", "type")))

    def __str__(self) -> str:
        path = ";".join(f"{k}={v if k == 'id' else quote(v, safe=_SAFE_PATH)}" for k, v in self.path.items())
        query = "&".join(f"{k}={quote(v, safe=_SAFE_QUERY)}" for k, v in self.query.items())
        return SCHEME + path + (f"?{query}" if query else "")

    @property
    def display(self) -> str:
        """The URI for messages and logs: a pin-value never shows."""
        if "pin-value" not in self.query:
            return str(self)
        return str(replace(self, query={**self.query, "pin-value": "(hidden)"}))

    def pin(self) -> str | None:
        """The user PIN from pin-source (env:NAME or file:PATH) or pin-value; None: no login."""
        if "pin-value" in self.query:
            return self.query["pin-value"]
        source = self.query.get("pin-source")
        if source is None:
            return None
        if source.startswith("env:"):
            name = source[4:]
            value = os.environ.get(name)
            if not value:
                raise TokenError(f"the token's PIN is in ${name}, which is not set", f"export {name}=<the token's user PIN>")
            return value
        path = Path(source[5:].removeprefix("//"))
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise TokenError(f"the token's PIN file {path} cannot be read ({exc.strerror})",
                             f"write the user PIN to {path}, readable by scepd only (chmod 600)") from None


def _attributes(text: str, separator: str, known: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in filter(None, text.split(separator)):
        name, equals, value = item.partition("=")
        name = name.lower()
        if not equals:
            raise Pkcs11UriError(name, "expected NAME=VALUE")
        if name not in known:
            raise Pkcs11UriError(name, f"unknown attribute (scepd reads {', '.join(known)})")
        if name in values:
            raise Pkcs11UriError(name, "given twice")
        if _PERCENT.search(value):
            raise Pkcs11UriError(name, "a '%' must be followed by two hex digits")
        # id is binary: kept percent-encoded here, decoded to bytes by Pkcs11Uri.id.
        values[name] = value if name == "id" else unquote(value, errors="strict")
    return values


# --- modules, tokens and their sessions ------------------------------------------------------

# PKCS#11 errors after which the session (or the whole module) is gone rather than the
# operation refused: the connection is re-made once, then the key is unavailable.
# GeneralError is not among them: SoftHSM answers a ciphertext with bad padding with it.
_GONE = ("DeviceError", "DeviceMemory", "DeviceRemoved", "SessionClosed", "SessionHandleInvalid",
         "TokenNotPresent", "TokenNotRecognised", "UserNotLoggedIn", "ObjectHandleInvalid", "KeyHandleInvalid",
         "FunctionFailed", "NoSuchToken", "CryptokiNotInitialized", "SlotIDInvalid")


def is_gone(exc: BaseException) -> bool:
    return type(exc).__name__ in _GONE


def binding():
    """python-pkcs11, with the fix when it is not installed."""
    try:
        import pkcs11
    except ImportError:
        raise TokenError("the PKCS#11 binding (python-pkcs11) is not installed",
                         "pip install 'scepd[pkcs11]' (or: pip install python-pkcs11)") from None
    return pkcs11


class _Module:
    """One loaded PKCS#11 library; `generation` grows each time it is re-initialised, which
    invalidates every session opened before."""

    def __init__(self, path: str) -> None:
        pkcs11 = binding()
        if not Path(path).is_file():
            raise TokenError(f"the PKCS#11 module {path} does not exist",
                             "install the module at that path (SoftHSM2: apt-get install softhsm2; an HSM: its vendor's PKCS#11 library), or correct module-path")
        try:
            self.lib = pkcs11.lib(path)
        except Exception as exc:  # the binding raises its base error for a library that does not load
            raise TokenError(f"the PKCS#11 module {path} does not load ({exc})",
                             "install the vendor's PKCS#11 module for this machine's architecture at that path") from None
        self.generation = 0
        # Held by every Connection of this module around each use of its sessions, and by
        # reinitialize: C_Finalize ends the sessions of every token on the module.
        self.lock = threading.RLock()

    def reinitialize(self) -> None:
        """C_Finalize and C_Initialize: what brings a module back after its token went away
        (SoftHSM, like many, does not recover a session or a slot list without it)."""
        with self.lock:
            self.generation += 1
            try:
                self.lib.finalize()
            except Exception as exc:
                if not _is_binding_error(exc):
                    raise
            self.lib.initialize()


class Connection:
    """The logged-in session of one token, shared by every key in it."""

    def __init__(self, uri: Pkcs11Uri) -> None:
        self.uri = uri
        self.module = _module(uri.module_path)
        self.lock = self.module.lock  # see _Module.lock
        self._session = None
        self._generation = -1
        self._handles: dict[tuple, object] = {}
        self._broken = False
        self._refused: tuple[bytes, str, str] | None = None  # (the refused PIN's digest, reason, fix)

    def _token(self):
        wanted = {k: v for k, v in self.uri.path.items() if k not in ("object", "id", "type")}
        matches = [t for t in self.module.lib.get_tokens() if _token_matches(t, wanted)]
        if not matches:
            raise TokenError(f"no token matching {wanted or 'any'} is present in {self.uri.module_path}",
                             "check the token's label (softhsm2-util --show-slots, or pkcs11-tool --module MODULE --list-slots) and that the HSM is connected")
        if len(matches) > 1:
            raise TokenError(f"{len(matches)} tokens match {wanted or 'any'}", "name the token by token= or serial= in the URI")
        return matches[0]

    def session(self):
        if self._broken:
            self._reinitialize()
        if self._session is not None and self._generation == self.module.generation:
            return self._session
        pkcs11 = binding()
        generation = self.module.generation
        pin = self.uri.pin()
        digest = hashlib.sha256((pin or "").encode()).digest()
        if self._refused is not None and self._refused[0] == digest:
            raise PinRefused(*self._refused[1:])  # not offered again: each try counts towards the lock
        token = self._token()
        try:
            # Read-write: `scepd init --pkcs11` generates keys through the same session.
            session = token.open(rw=True, user_pin=pin)
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            session = token.open(rw=True)  # the login belongs to the application: this session shares it
        except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinInvalid, pkcs11.exceptions.PinLenRange):
            source = self.uri.query.get("pin-source", "pin-value")
            where = "$" + source[4:] if source.startswith("env:") else source.removeprefix("file:")
            self._refused = (digest, f"the token {token.label!r} refused the PIN from {source} "
                             "(not offered again until it changes or scepd restarts)",
                             f"check the user PIN in {where} (the token's user PIN, not its SO PIN)")
            raise PinRefused(*self._refused[1:]) from None
        except pkcs11.exceptions.PinLocked:
            raise TokenError(f"the token {token.label!r} has locked its user PIN",
                             "unlock it with the SO PIN (softhsm2-util or the HSM's own tool), then set a new user PIN") from None
        self._session, self._generation, self._handles, self._refused = session, generation, {}, None
        return session

    def private_key(self, uri: Pkcs11Uri):
        """The private key object `uri` names in this token."""
        key = (uri.object, uri.id)
        if key not in self._handles or self._generation != self.module.generation:
            session = self.session()
            self._handles[key] = find_key(session, uri, "PRIVATE_KEY")
        return self._handles[key]

    def run(self, uri: Pkcs11Uri, operation: Callable[[object], T],
            gone: Callable[[BaseException], bool] = is_gone) -> T:
        """`operation(private key object)` under the lock, once more on a fresh session after
        a dead one (what `gone` says is one). KeyUnavailable when the token cannot be reached;
        what the operation itself refuses (a PKCS11Error that is no sign of a dead session) is
        raised as it is."""
        with self.lock:
            if self._broken:
                self._reinitialize()
            for last_try in (False, True):
                try:
                    return operation(self._handle(uri))
                except Exception as exc:
                    if not gone(exc):
                        raise
                    if last_try:
                        self._broken = True
                        raise KeyUnavailable(
                            f"the token holding {_name(uri)} does not answer ({type(exc).__name__})") from None
                self._reinitialize()

    def _handle(self, uri: Pkcs11Uri):
        try:
            return self.private_key(uri)
        except TokenError as exc:
            # A refused PIN needs no re-initialising (which would end every other session).
            self._broken = not isinstance(exc, PinRefused)
            raise KeyUnavailable(f"the key {_name(uri)} cannot be used: {exc.reason}") from None
        except Exception as exc:
            if not _is_binding_error(exc):
                raise
            self._broken = True  # a module that lost its token needs re-initialising once it is back
            raise KeyUnavailable(f"the token holding {_name(uri)} cannot be reached ({type(exc).__name__})") from None

    def reset(self) -> None:
        """Start afresh: the module re-initialised, the next use opens a new session."""
        with self.lock:
            self._reinitialize()

    def _reinitialize(self) -> None:
        self._session, self._broken = None, False
        try:
            self.module.reinitialize()
        except Exception as exc:
            if not _is_binding_error(exc):
                raise
            self._broken = True


def _is_binding_error(exc: BaseException) -> bool:
    return any(c.__name__ == "PKCS11Error" for c in type(exc).__mro__)


def _name(uri: Pkcs11Uri) -> str:
    return f"object={uri.object or uri.path.get('id', '?')} in token {uri.path.get('token', '?')}"


def find_key(session, uri: Pkcs11Uri, kind: str):
    """The one object of class `kind` (PRIVATE_KEY, PUBLIC_KEY) named by label and/or id."""
    pkcs11 = binding()
    attrs = {pkcs11.Attribute.CLASS: getattr(pkcs11.ObjectClass, kind)}
    if uri.object is not None:
        attrs[pkcs11.Attribute.LABEL] = uri.object
    if uri.id is not None:
        attrs[pkcs11.Attribute.ID] = uri.id
    found = list(session.get_objects(attrs))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise TokenError(f"{what} {kind.lower().replace('_', ' ')} object named {_name(uri)}",
                         f"list the token's objects with pkcs11-tool --module {uri.module_path} --login --list-objects, "
                         "and name one by object= (its label) or id=")
    return found[0]


def _token_matches(token, wanted: dict[str, str]) -> bool:
    facts = {"token": token.label, "serial": _text(token.serial), "manufacturer": token.manufacturer_id,
             "model": token.model, "slot-id": str(token.slot.slot_id),
             "slot-description": token.slot.slot_description, "slot-manufacturer": token.slot.manufacturer_id}
    return all(facts.get(k, v) == v for k, v in wanted.items() if not k.startswith("library-"))


def _text(value) -> str:
    return value.decode("ascii", "replace").strip() if isinstance(value, bytes) else str(value).strip()


_MODULES: dict[str, _Module] = {}
_CONNECTIONS: dict[tuple, Connection] = {}
_REGISTRY_LOCK = threading.Lock()


def _module(path: str) -> _Module:
    """Each library once per process: a second C_Initialize of the same one is refused."""
    with _REGISTRY_LOCK:
        if path not in _MODULES:
            _MODULES[path] = _Module(path)
        return _MODULES[path]


def connection(uri: Pkcs11Uri) -> Connection:
    key = (*uri.token_key(), uri.query.get("pin-source", ""))
    with _REGISTRY_LOCK:
        existing = _CONNECTIONS.get(key)
    if existing is not None:
        return existing
    made = Connection(uri)
    with _REGISTRY_LOCK:
        return _CONNECTIONS.setdefault(key, made)
