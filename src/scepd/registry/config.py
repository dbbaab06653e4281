"""scepd.toml: typed sections, unknown keys refused, every value overridable from the
environment as SCEPD_<SECTION>_<KEY> (for example SCEPD_SERVER_PORT=9000)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from scepd.ca.templates import BUILTIN_TEMPLATES, Template, TemplateMapping

# [server] and durations live in modules of their own; their names are the configuration's too.
from scepd.registry.durations import MAX_DURATION, ConfigError, parse_duration  # noqa: F401
from scepd.registry.server_config import SELF_TLS_CERT, SELF_TLS_KEY, ServerConfig  # noqa: F401

CONFIG_FILE = "scepd.toml"
@dataclass(frozen=True)
class KeyFiles:
    """A CA's or the RA's files: the active pair, the next one (after `rollover`, before
    `activate-next`) and the previous ones (still trusted, still signing their CRLs)."""

    certificate: str
    key: str
    next_certificate: str = ""
    next_key: str = ""
    previous_certificates: tuple[str, ...] = ()
    previous_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaKeyFiles(KeyFiles):
    """The CA's files, and what a CA under someone else's root adds (docs/pki.md)."""

    # PEM certificates above our CAs, up to a self-signed root, in any order (one pool for the
    # active, next and previous CA); empty: the CA is its own root.
    chain: str = ""
    # A CSR (scepd init --subordinate) whose signed certificate `scepd ca install` awaits;
    # while set, the instance is not servable. next_request: the same for the next CA
    # (scepd ca rollover of a subordinate; its key is next_key), `scepd ca install --next`.
    request: str = ""
    next_request: str = ""


@dataclass(frozen=True)
class KeysConfig:
    # Name of the environment variable that holds the passphrase of encrypted key files.
    passphrase_env: str = "SCEPD_KEY_PASSPHRASE"


@dataclass(frozen=True)
class ScepConfig:
    # A request whose signingTime is further than this from our clock gets badTime.
    max_clock_skew: str = "24h"
    # The algorithm policy. MD5 signatures (of the pkiMessage or the PKCS#10 request) are
    # forgeable and refused unless this is set. Single DES is accepted by default, because Go
    # clients and older network gear send nothing else, but every use is logged as weak with
    # the client named; false refuses it. A reply never uses a weaker cipher than its request.
    allow_md5: bool = False
    allow_des: bool = True


@dataclass(frozen=True)
class CrlConfig:
    validity: str = "7d"  # nextUpdate - thisUpdate; re-signed after half of it


@dataclass(frozen=True)
class OcspConfig:
    """The OCSP responder at /ocsp (RFC 6960)."""

    # "delegated": responses are signed by an OCSP signing certificate that scepd issues from
    # each CA and renews itself (files in `directory`); "ca": by the CA key itself.
    signer: str = "delegated"
    directory: str = "ocsp"  # <CA key id>.pem and .key, relative to the instance
    signer_validity: str = "30d"  # renewed when a third of it remains
    # nextUpdate - thisUpdate of a response, at most [crl] validity; a signed response is
    # served from memory until half of it has passed or the status changes.
    validity: str = "1h"
    cache_size: int = 10000  # signed responses kept per worker process

    def __post_init__(self) -> None:
        if self.signer not in ("delegated", "ca"):
            raise ValueError(f"signer must be 'delegated' or 'ca', not {self.signer!r}")
        for name in ("validity", "signer_validity"):
            try:
                if parse_duration(getattr(self, name)) <= dt.timedelta(0):
                    raise ValueError(f"{name} must be longer than 0s")
            except ConfigError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be 0 or more, not {self.cache_size}")


@dataclass(frozen=True)
class ChallengeConfig:
    static: str = ""  # empty: no static challenge
    one_time_passwords: bool = True
    otp_validity: str = "60m"
    # local: this process verifies challenges. remote: ask a registration point's validation
    # API (scepd's or Microsoft Intune's) at remote_url; no verdict, no certificate.
    mode: str = "local"
    remote_url: str = ""  # e.g. https://rp.example/ScepActions
    remote_token: str = ""  # a static bearer token for remote_url, or:
    token_url: str = ""  # an OAuth2 token endpoint (client credentials)
    client_id: str = ""
    client_secret: str = ""
    scope: str = ""
    remote_timeout: int = 10  # seconds
    webhook_url: str = ""  # a third-party MDM's allow/deny endpoint for every challenge

    def __post_init__(self) -> None:
        if self.mode not in ("local", "remote", "intune"):
            raise ValueError(f"mode must be local, remote or intune, not {self.mode!r}")


@dataclass(frozen=True)
class IntuneConfig:
    """Microsoft Intune as the registration point ([challenge] mode = "intune"): scepd is
    Intune's third-party SCEP CA and asks Intune's ScepRequestValidationFEService, found
    through Graph, to validate each challenge (docs/configuration.md)."""

    tenant_id: str = ""  # Entra tenant ID or domain
    client_id: str = ""  # the app registration's application ID
    client_secret: str = ""  # or a certificate credential (SCEPD_INTUNE_CLIENT_SECRET; never logged):
    client_certificate: str = ""  # PEM path; the key beside it (client_key), for a JWT client assertion
    client_key: str = ""
    # {authority_url}/{tenant_id}/oauth2/v2.0/token; authority_url, graph_url and ca_bundle
    # let the whole exchange be pointed at a local HTTPS emulator.
    authority_url: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com"
    ca_bundle: str = ""  # extra trusted roots (PEM) for these HTTPS calls: tests, TLS-inspecting proxies
    caller_info: str = ""  # what Intune's reports show as the caller; empty: scepd/<its version>
    revocation_poll_interval: str = "5m"  # 0 turns the revocation loop off


@dataclass(frozen=True)
class NotificationsConfig:
    """Every success and failure is recorded and POSTed (JSON) to these URLs, signed with
    an HMAC-SHA256 header when hmac_secret is set, retried with backoff, never in the way
    of the enrollment response."""

    webhooks: tuple[str, ...] = ()
    hmac_secret: str = ""
    max_attempts: int = 8


@dataclass(frozen=True)
class RegistrationPointConfig:
    """The registration point's registry: what verifying an MDM challenge needs."""

    encryption_certificate: str = "rp/encryption.pem"  # challenges are encrypted to this
    encryption_key: str = "rp/encryption.key"
    signing_certificate: str = "rp/mdm-signing.pem"  # scepd's own MDM side signs with this
    signing_key: str = "rp/mdm-signing.key"
    trusted_signers: tuple[str, ...] = ("rp/mdm-signing.pem",)  # certificates whose challenges count
    audience: str = "scepd-registration-point"  # the aud claim challenges must carry
    issuer: str = "scepd"  # the iss claim of challenges scepd issues
    challenge_lifetime: str = "60m"
    clock_skew: str = "5m"
    api_tokens: tuple[str, ...] = ()  # SHA-256 of the bearer tokens of the HTTP APIs


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///scepd.db"  # a relative SQLite path is relative to the instance
    # The longest a request waits for the database (SQLite's lock, PostgreSQL's locks and
    # statements, a pooled connection); then it is refused as StoreUnavailable.
    busy_timeout: str = "5s"


@dataclass(frozen=True)
class LoggingConfig:
    file: str = "scepd.log"  # JSON lines, relative to the instance; empty: stderr only


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    ca: CaKeyFiles = field(default_factory=lambda: CaKeyFiles("ca.pem", "ca.key"))
    ra: KeyFiles = field(default_factory=lambda: KeyFiles("ra.pem", "ra.key"))
    keys: KeysConfig = field(default_factory=KeysConfig)
    scep: ScepConfig = field(default_factory=ScepConfig)
    crl: CrlConfig = field(default_factory=CrlConfig)
    ocsp: OcspConfig = field(default_factory=OcspConfig)
    templates: dict[str, Template] = field(default_factory=lambda: dict(BUILTIN_TEMPLATES))
    template_mapping: TemplateMapping = field(default_factory=TemplateMapping)
    challenge: ChallengeConfig = field(default_factory=ChallengeConfig)
    registration_point: RegistrationPointConfig = field(default_factory=RegistrationPointConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    intune: IntuneConfig = field(default_factory=IntuneConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def enrollment_threads(self) -> int:
        """Threads per worker process that run enrollments ([server] threads, when set).

        Python runs one thread at a time, so threads beyond what keeps the core busy only
        add switching (measured over HTTP: about 30% more CPU per enrollment with four threads
        than with one). Two suffice when nothing in an enrollment waits on another host (local
        verification, no webhook, SQLite): one computes while the other commits. A remote
        registration point (Intune answers in hundreds of milliseconds), a webhook or a
        database server are waited on, and then more threads keep the core busy."""
        if self.server.threads:
            return self.server.threads
        waits = self.challenge.mode in ("remote", "intune") or bool(self.challenge.webhook_url) or not self.database.url.startswith("sqlite")
        return 16 if waits else 2


def _coerce(section: str, key: str, kind, value, from_env: bool):
    where = f"[{section}] {key}" + (f" (from SCEPD_{section.upper()}_{key.upper()})" if from_env else "")
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if from_env and str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return str(value).lower() in ("1", "true", "yes", "on")
        elif kind is int:
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        elif kind is str:
            if isinstance(value, str):
                return value
        elif origin is tuple:
            if from_env:
                value = [v.strip() for v in str(value).split(",") if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value)
    except (TypeError, ValueError):
        pass
    expected = {bool: "true or false", int: "an integer", str: "a string"}.get(kind, "a list of strings")
    raise ConfigError(f"{where} must be {expected}, not {value!r}")


def _section(name: str, cls, table: dict, environ: typing.Mapping[str, str], default, fixed=None):
    """One table as a `cls`; `fixed` are fields given by the table's position, not its keys."""
    fixed = fixed or {}
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[{name}] has unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    values = dict(fixed)
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            continue
        env_name = f"SCEPD_{name.upper()}_{f.name.upper()}"
        if env_name in environ:
            values[f.name] = _coerce(name, f.name, hints[f.name], environ[env_name], True)
        elif f.name in table:
            values[f.name] = _coerce(name, f.name, hints[f.name], table[f.name], False)
        else:
            values[f.name] = getattr(default, f.name)
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(f"[{name}]: {exc}") from None


def _templates(tables: dict) -> dict[str, Template]:
    """[templates.NAME] tables over the built-in templates (a table may redefine one).
    Environment overrides do not reach templates: their names are free text."""
    templates = dict(BUILTIN_TEMPLATES)
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[templates.{name}] must be a table")
        default = BUILTIN_TEMPLATES.get(name, Template(name=name))
        templates[name] = _section(f"templates.{name}", Template, table, {}, default, fixed={"name": name})
    return templates


def load_config(path: Path, environ: typing.Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: create an instance with 'scepd init --dir {path.parent}'") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    default = Config()
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{path} has unknown section(s) {', '.join(sorted(unknown))}")
    sections = {}
    hints = typing.get_type_hints(Config)
    for name in fields:
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        if name == "templates":
            sections[name] = _templates(table)
        else:
            sections[name] = _section(name, hints[name], table, environ, getattr(default, name))
    config = Config(**sections)
    parse_duration(config.scep.max_clock_skew)
    parse_duration(config.challenge.otp_validity)
    parse_duration(config.crl.validity)
    if parse_duration(config.database.busy_timeout) <= dt.timedelta(0):
        raise ConfigError("[database] busy_timeout must be longer than 0s")
    parse_duration(config.registration_point.challenge_lifetime)
    parse_duration(config.registration_point.clock_skew)
    if config.intune.revocation_poll_interval.strip() != "0":
        parse_duration(config.intune.revocation_poll_interval)
    for role in ("ca", "ra"):
        files = getattr(config, role)
        if len(files.previous_certificates) != len(files.previous_keys):
            raise ConfigError(f"[{role}] previous_certificates and previous_keys must pair up")
        # A next_key alone is a subordinate's next CA awaiting its certificate (next_request).
        awaiting = role == "ca" and bool(config.ca.next_request) and not files.next_certificate
        if bool(files.next_certificate) != bool(files.next_key) and not (awaiting and files.next_key):
            raise ConfigError(f"[{role}] next_certificate and next_key go together")
    return config


def config_as_toml_tables(config: Config) -> dict:
    """The configuration as TOML tables (for writing scepd.toml)."""
    def table(section, skip=()):
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(section).items()
            if k not in skip
        }

    out = {}
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        if f.name == "templates":
            out[f.name] = {name: table(t, skip=("name",)) for name, t in section.items()}
        else:
            out[f.name] = table(section)
    return out


def update_config_file(path: Path, changes: dict[str, dict[str, object]]) -> Config:
    """Set keys in scepd.toml (section -> key -> value), validate the result and replace
    the file atomically (0600, as it holds the static challenge). Returns the new Config."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    for section, values in changes.items():
        table = data.setdefault(section, {})
        for key, value in values.items():
            table[key] = list(value) if isinstance(value, tuple) else value
    text = tomli_w.dumps(data)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        config = load_config(tmp, environ={})
    except ConfigError:
        tmp.unlink()
        raise
    os.replace(tmp, path)
    return config
