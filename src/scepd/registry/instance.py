"""An instance directory: scepd.toml, the CA and RA key pairs, the database, the log.

`create_instance` makes one (with the registration point's two pairs, which `doctor --fix`
re-creates the same way); `Instance.open` reads one; `load_key_material` loads the keys once
and says exactly which file is missing or wrong, and which command mends it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from scepd.ca.authority import CertificateAuthority, create_root_ca
from scepd.ca.chain import (
    MAX_PATH_LENGTH,
    ChainError,
    is_self_signed,
    load_pem_certificates,
    signed_by,
)
from scepd.ca.keys import (
    KeyPair,
    generate_key,
    is_key_uri,
    load_key,
    save_certificate,
    save_key,
    write_private,
)
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.registry.config import (
    CONFIG_FILE,
    ChallengeConfig,
    Config,
    ConfigError,
    config_as_toml_tables,
    load_config,
    parse_duration,
)
from scepd.store import Store

DEFAULT_DIR = "instance"
# The registration point's encryption and signing certificates (renewed by re-creating them).
SERVICE_VALIDITY_DAYS = 730


def default_directory() -> Path:
    return Path(os.environ.get("SCEPD_DIR") or DEFAULT_DIR)


class InstanceError(Exception):
    """Something the instance needs is missing or wrong. `entry` names it, `fix` is the command
    (or edit) that mends it."""

    def __init__(self, entry: str, reason: str, fix: str) -> None:
        super().__init__(f"{entry}: {reason}. Fix: {fix}")
        self.entry = entry
        self.reason = reason
        self.fix = fix


@dataclass(frozen=True)
class Instance:
    directory: Path
    config: Config

    @classmethod
    def open(cls, directory: Path, overrides: Mapping[str, str] | None = None) -> "Instance":
        """The instance in `directory`. `overrides` are SCEPD_<SECTION>_<KEY> settings that
        win over both scepd.toml and the environment (what `scepd serve --port` and `--db`
        hand to every worker and every reload)."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).exists():
            raise InstanceError(
                str(directory / CONFIG_FILE), "no instance here", f"scepd init --dir {directory}"
            )
        try:
            environ = {**os.environ, **overrides} if overrides else None
            return cls(directory, load_config(directory / CONFIG_FILE, environ))
        except ConfigError as exc:
            raise InstanceError(str(directory / CONFIG_FILE), str(exc), f"edit {directory / CONFIG_FILE}") from None

    def path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.directory / p

    @property
    def database_url(self) -> str:
        url = self.config.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
            return prefix + str(self.path(url[len(prefix):]).resolve())
        return url

    @property
    def passphrase(self) -> bytes | None:
        value = os.environ.get(self.config.keys.passphrase_env)
        return value.encode("utf-8") if value else None

    def open_store(self, clock: Clock = SYSTEM_CLOCK) -> Store:
        # The store creates a missing SQLite file 0600 itself, whichever command opens it first.
        busy_timeout = parse_duration(self.config.database.busy_timeout).total_seconds()
        return Store(self.database_url, busy_timeout=busy_timeout, clock=clock)


@dataclass(frozen=True)
class KeyMaterial:
    """Every key pair the server uses, loaded once.

    `ca` issues and `ra` signs CertReps (the RA is the CA itself when [ra] certificate is
    empty). Previous pairs stay trusted for renewals, decryption and their CRLs; the next
    pair exists between `scepd ca rollover` and `scepd ca activate-next`.
    """

    ca: CertificateAuthority
    ra: KeyPair
    previous_cas: tuple[CertificateAuthority, ...] = ()
    previous_ras: tuple[KeyPair, ...] = ()
    next_ca: CertificateAuthority | None = None
    next_ra: KeyPair | None = None
    # The certificates above our CAs ([ca] chain), when they are not their own roots.
    chain: tuple[x509.Certificate, ...] = ()

    def path_of(self, ca: CertificateAuthority) -> list[x509.Certificate]:
        """`ca`'s certificate and those above it in `chain`, as far as they lead (doctor and
        start-up checks say when that is short of a self-signed root)."""
        path = [ca.certificate]
        while not is_self_signed(path[-1]) and len(path) <= MAX_PATH_LENGTH:
            issuer = next((c for c in self.chain if c not in path and signed_by(path[-1], c)), None)
            if issuer is None:
                break
            path.append(issuer)
        return path

    @property
    def all_cas(self) -> tuple[CertificateAuthority, ...]:
        return (self.ca, *self.previous_cas) + ((self.next_ca,) if self.next_ca else ())

    @property
    def all_ras(self) -> tuple[KeyPair, ...]:
        return (self.ra, *self.previous_ras) + ((self.next_ra,) if self.next_ra else ())

    @property
    def ca_ra_certificates(self) -> list[x509.Certificate]:
        """GetCACert: the RA, the issuing CA with the chain above it up to the root, and the
        CAs still in their overlap (a SET: DER sorts it, so clients tell them apart by their
        extensions, not their order)."""
        certs = [self.ra.certificate, *self.path_of(self.ca)]
        for previous in self.previous_cas:
            certs += self.path_of(previous)
        return list(dict.fromkeys(certs))

    @property
    def next_ca_ra_certificates(self) -> list[x509.Certificate]:
        """GetNextCACert: the next RA and the next CA with its chain; empty without a next CA."""
        if self.next_ca is None:
            return []
        return list(dict.fromkeys([p.certificate for p in (self.next_ra,) if p is not None] + self.path_of(self.next_ca)))


def load_pair(instance: Instance, role: str, cert_name: str, key_name: str) -> KeyPair:
    """A certificate and its key from the instance, checked to belong together; an
    InstanceError names the entry, the reason and the fix."""
    in_token = is_key_uri(key_name)
    cert_path, key_path = instance.path(cert_name), None if in_token else instance.path(key_name)
    for p in (cert_path, key_path):
        if p is not None and not p.exists():
            raise InstanceError(
                f"[{role}] {p.name}",
                f"{p} is missing",
                "restore it from backup (its certificate is what devices trust), or create a new instance with 'scepd init'",
            )
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise InstanceError(f"[{role}] certificate", f"{cert_path} is not a PEM certificate ({exc})", "restore it from backup") from None
    try:
        key = token_key(role, key_name) if in_token else load_key(key_path, instance.passphrase)
    except TypeError:
        raise InstanceError(
            f"[{role}] key",
            f"{key_path} is encrypted and no passphrase was given",
            f"export {instance.config.keys.passphrase_env}=<passphrase>",
        ) from None
    except ValueError as exc:
        raise InstanceError(
            f"[{role}] key",
            f"{key_path} cannot be loaded ({exc}); a wrong passphrase gives this too",
            f"check {instance.config.keys.passphrase_env}, or restore the key from backup",
        ) from None
    pair = KeyPair(certificate, key)
    if not pair.key_matches_certificate():
        raise InstanceError(f"[{role}] key", f"{key_path or key_name} does not belong to {cert_path}",
                            "restore the matching pair from backup, or name the token object that belongs to it")
    return pair


def token_key(role: str, uri: str):
    """The key a pkcs11: URI names, open and logged in; InstanceError says what failed (the
    module, the token, the PIN, the object) and how to mend it."""
    return token_entry(f"[{role}] key", lambda: load_key(uri))


def token_entry(entry: str, action):
    """`action()`, with a PKCS#11 URI's or token's fault as an InstanceError naming `entry`."""
    from scepd.ca.pkcs11 import Pkcs11UriError, TokenError

    try:
        return action()
    except Pkcs11UriError as exc:
        raise InstanceError(entry, f"the PKCS#11 URI is wrong: {exc}", "correct the URI (RFC 7512)") from None
    except TokenError as exc:
        raise InstanceError(entry, exc.reason, exc.fix) from None


def load_key_material(instance: Instance, clock: Clock = SYSTEM_CLOCK) -> KeyMaterial:
    """Every pair the configuration names; the CAs issue by `clock`."""
    config = instance.config
    crl_base = f"{config.server.publication_url}/crl"
    if config.ca.request:
        raise InstanceError(
            "[ca] certificate",
            f"this instance awaits its CA certificate: {instance.path(config.ca.request)} is to be signed by the root CA",
            f"have the root sign it (docs/pki.md), then: scepd ca install SIGNED.pem --chain CHAIN.pem --dir {instance.directory}",
        )

    def authority(cert_name: str, key_name: str) -> CertificateAuthority:
        return CertificateAuthority(load_pair(instance, "ca", cert_name, key_name), crl_base, clock,
                                    public_url=config.server.publication_url)

    ca = authority(config.ca.certificate, config.ca.key)
    ra = load_pair(instance, "ra", config.ra.certificate, config.ra.key) if config.ra.certificate else ca.pair
    return KeyMaterial(
        ca=ca,
        ra=ra,
        previous_cas=tuple(authority(c, k) for c, k in zip(config.ca.previous_certificates, config.ca.previous_keys, strict=True)),
        previous_ras=tuple(
            load_pair(instance, "ra", c, k) for c, k in zip(config.ra.previous_certificates, config.ra.previous_keys, strict=True)
        ),
        next_ca=authority(config.ca.next_certificate, config.ca.next_key) if config.ca.next_certificate else None,
        next_ra=load_pair(instance, "ra", config.ra.next_certificate, config.ra.next_key) if config.ra.next_certificate else None,
        chain=load_chain(instance),
    )


def load_chain(instance: Instance) -> tuple[x509.Certificate, ...]:
    """The certificates of [ca] chain (none when it is empty)."""
    name = instance.config.ca.chain
    if not name:
        return ()
    path = instance.path(name)
    try:
        return tuple(load_pem_certificates(path.read_bytes(), str(path)))
    except OSError as exc:
        raise InstanceError("[ca] chain", f"{path} cannot be read ({exc.strerror})",
                            "restore it (the CA certificates above ours, up to the root), or scepd ca install again") from None
    except ChainError as exc:
        raise InstanceError("[ca] chain", exc.reason, exc.fix) from None


def create_instance(
    directory: Path,
    *,
    ca_subject: str = "CN=scepd Root CA",
    key_spec: str = "rsa:3072",
    passphrase: bytes | None = None,
    static_challenge: str | None = None,
    pkcs11: str | None = None,
) -> Instance:
    """A new instance: root CA, RSA RA certificate, scepd.toml (with a random static
    challenge unless one is given) and an empty database. Never overwrites an instance.
    `pkcs11` (a URI naming module, token and PIN) generates every key inside that token
    instead, as the objects ca, ra, rp-encryption and rp-signing, and scepd.toml names them."""
    directory = Path(directory)
    config = new_config(directory, static_challenge)
    subject = parse_subject(ca_subject)
    if pkcs11:
        from scepd.registry.tokens import token_config

        config = token_entry("--pkcs11", lambda: token_config(config, pkcs11))
    directory.mkdir(parents=True, exist_ok=True)

    instance = Instance(directory, config)
    ca_key = new_key(instance, "ca", config.ca.key, key_spec, passphrase)
    ca_cert = create_root_ca(subject, ca_key)
    save_certificate(ca_cert, directory / config.ca.certificate)
    write_config(instance)
    complete_instance(instance, KeyPair(ca_cert, ca_key), passphrase)
    return instance


def new_key(instance: Instance, role: str, key_name: str, spec: str, passphrase: bytes | None, reuse: bool = False):
    """A new key for the entry `key_name`: a file written 0600, or, for a pkcs11: URI,
    generated inside the token (non-extractable; it never touches the disk). `reuse`: a
    token object of that name is taken as it is rather than refused."""
    if not is_key_uri(key_name):
        key = generate_key(spec)
        save_key(key, instance.path(key_name), passphrase)
        return key
    return token_entry(f"[{role}] key", lambda: generate_key(spec, key_name, reuse=reuse))


def new_config(directory: Path, static_challenge: str | None) -> Config:
    """The configuration of a new instance in `directory` (a random static challenge unless
    one is given); InstanceError when an instance is there already."""
    config = replace(Config(), challenge=ChallengeConfig(static=static_challenge or secrets.token_hex(16)))
    targets = [directory / CONFIG_FILE] + [
        directory / name for name in (config.ca.certificate, config.ca.key, config.ra.certificate, config.ra.key)
    ]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise InstanceError(str(directory), f"an instance exists already ({', '.join(existing)})", "use another --dir, or remove it yourself")
    return config


def parse_subject(ca_subject: str) -> x509.Name:
    try:
        return x509.Name.from_rfc4514_string(ca_subject)
    except ValueError as exc:
        raise InstanceError("--ca-subject", f"{ca_subject!r} is not an RFC 4514 name ({exc})", "pass e.g. 'CN=Example CA,O=Example'") from None


def write_config(instance: Instance) -> None:
    # scepd.toml holds the static challenge, so it is as private as the keys.
    write_private(instance.path(CONFIG_FILE), tomli_w.dumps(config_as_toml_tables(instance.config)).encode("utf-8"))


def complete_instance(instance: Instance, ca_pair: KeyPair, passphrase: bytes | None) -> None:
    """What an instance needs once its CA certificate is there (init, or `scepd ca install`
    of a subordinate): the RSA RA certificate, the registration point's pairs, the database."""
    config = instance.config
    ca = CertificateAuthority(ca_pair, f"{config.server.publication_url}/crl", public_url=config.server.publication_url)
    # SCEP key transport is RSA-only: under an EC CA the RA is RSA 2048.
    key = ca_pair.key
    ra_spec = f"rsa:{key.key_size}" if isinstance(key, rsa.RSAPrivateKey) else "rsa:2048"
    ra_key = new_key(instance, "ra", config.ra.key, ra_spec, passphrase)
    cn = ca_subject_cn(ca_pair.certificate.subject)
    ra_cert = ca.issue_ra_certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} SCEP RA")]), ra_key)
    save_certificate(ra_cert, instance.path(config.ra.certificate))
    create_encryption_pair(instance, ca)
    create_signing_pair(instance, ca)
    store = instance.open_store()
    store.create_schema()
    store.dispose()


def ca_subject_cn(subject: x509.Name) -> str:
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else "scepd"


def _create_pair(instance: Instance, ca: CertificateAuthority, cert_name: str, key_name: str, cn: str, usage: set[str]) -> KeyPair:
    # A token's key is re-certified as it is, never replaced (an object of that label stays).
    in_token = is_key_uri(key_name)
    key = (new_key(instance, "registration_point", key_name, "ec:p256", None, reuse=True) if in_token
           else ec.generate_private_key(ec.SECP256R1()))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = ca.issue_service_certificate(subject, key.public_key(), usage, SERVICE_VALIDITY_DAYS)
    cert_path = instance.path(cert_name)
    paths = (cert_path,) if in_token else (instance.path(key_name), cert_path)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if p.exists():
            # Keep what was there for the record; never overwrite key material in place.
            p.rename(p.with_name(f"{p.name}.replaced-{ca.clock.now():%Y%m%dT%H%M%S}"))
    if not in_token:
        save_key(key, paths[0], instance.passphrase)
    save_certificate(cert, cert_path)
    return KeyPair(cert, key)


def create_encryption_pair(instance: Instance, ca: CertificateAuthority) -> KeyPair:
    """The registration point's encryption pair (MDM challenges are encrypted to it), issued
    by `ca`; a pair already there is kept beside it, renamed."""
    rp = instance.config.registration_point
    return _create_pair(instance, ca, rp.encryption_certificate, rp.encryption_key,
                        "scepd registration point encryption", {"keyAgreement"})


def create_signing_pair(instance: Instance, ca: CertificateAuthority) -> KeyPair:
    """The local MDM side's signing pair (`scepd challenge issue` signs with it)."""
    rp = instance.config.registration_point
    return _create_pair(instance, ca, rp.signing_certificate, rp.signing_key,
                        "scepd MDM challenge signing", {"digitalSignature"})
