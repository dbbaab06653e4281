"""The registration point's entries: its encryption pair, the local MDM signing pair, the
trusted signing certificates and API tokens, with their checks and self-repair.

This is where Microsoft's connector keeps what `ValidateChallenge` needs in a registry key,
and where it fails with `m_safeCertContext is an invalid handle` when an entry is gone.
Here loading never raises: a missing entry is None, the validator answers with a named code,
`check_registration_point` says what is wrong and, with `repair`, re-creates what can be
re-created safely (the encryption pair, the local signing pair and its trust).
`issue_local_challenge` is scepd's own MDM side: it signs challenges with the local pair.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from scepd.ca.authority import CertificateAuthority
from scepd.ca.keys import KeyPair, load_certificate, save_certificate
from scepd.challenge.mdm import ExpectedRequest, issue_challenge
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol.fingerprints import jose_thumbprint
from scepd.registry.checks import FAIL, PASS, WARN, CheckResult, certificate_validity
from scepd.registry.config import (
    CONFIG_FILE,
    ConfigError,
    load_config,
    parse_duration,
    update_config_file,
)
from scepd.registry.instance import (
    Instance,
    InstanceError,
    create_encryption_pair,
    create_signing_pair,
    load_pair,
)


@dataclass(frozen=True)
class RegistrationPointMaterial:
    encryption: KeyPair | None
    signing: KeyPair | None
    trusted: tuple[x509.Certificate, ...]


def _try_pair(instance: Instance, cert_name: str, key_name: str) -> KeyPair | None:
    """The pair, or None when it is missing, unreadable or mismatched (the checks say which)."""
    if not cert_name or not key_name:
        return None
    try:
        return load_pair(instance, "registration_point", cert_name, key_name)
    except InstanceError:
        return None


def _try_certificate(instance: Instance, name: str) -> x509.Certificate | None:
    try:
        return load_certificate(instance.path(name))
    except (OSError, ValueError):
        return None


def load_rp_material(instance: Instance) -> RegistrationPointMaterial:
    rp = instance.config.registration_point
    trusted = tuple(c for c in (_try_certificate(instance, n) for n in rp.trusted_signers) if c is not None)
    return RegistrationPointMaterial(
        encryption=_try_pair(instance, rp.encryption_certificate, rp.encryption_key),
        signing=_try_pair(instance, rp.signing_certificate, rp.signing_key),
        trusted=trusted,
    )


def issue_local_challenge(instance: Instance, expected: ExpectedRequest, lifetime: dt.timedelta | None = None,
                          clock: Clock = SYSTEM_CLOCK) -> tuple[str, dict]:
    """A challenge from scepd's own MDM side, signed with the instance's local signing pair
    and encrypted to its registration point. Raises InstanceError naming a missing entry."""
    rp = instance.config.registration_point
    material = load_rp_material(instance)
    for entry, pair in (("encryption", material.encryption), ("signing", material.signing)):
        if pair is None:
            raise InstanceError(
                f"[registration_point] {entry}_certificate", f"the {entry} pair is missing or unreadable", "scepd doctor --fix"
            )
    maximum = parse_duration(rp.challenge_lifetime)
    lifetime = lifetime or maximum
    if lifetime > maximum:
        raise ValueError(f"the validity may not exceed [registration_point] challenge_lifetime ({rp.challenge_lifetime})")
    return issue_challenge(
        signing_certificate=material.signing.certificate,
        signing_key=material.signing.key,
        encryption_certificate=material.encryption.certificate,
        expected=expected,
        issuer=rp.issuer,
        audience=rp.audience,
        lifetime=lifetime,
        clock=clock,
    )


def check_registration_point(instance: Instance, ca: CertificateAuthority, repair: bool) -> list[CheckResult]:
    """Check every entry the registration point needs; with `repair`, re-create the safe ones."""
    rp = instance.config.registration_point
    material = load_rp_material(instance)
    results: list[CheckResult] = []

    def pair_check(name, pair, create, what):
        fix = "scepd doctor --fix (or restart scepd serve) re-creates it; challenges issued before must be re-issued"
        if pair is None or pair.certificate.not_valid_after_utc <= ca.clock.now():
            if repair:
                create(instance, ca)
                return CheckResult(name, WARN, f"{what} was missing or expired and has been re-created")
            return CheckResult(name, FAIL, f"{what} is missing, expired, unreadable or does not match its certificate", fix)
        return certificate_validity(name, pair.certificate, fix, ca.clock)

    results.append(pair_check("registration_point.encryption", material.encryption, create_encryption_pair,
                              f"the encryption pair ({rp.encryption_certificate}, {rp.encryption_key})"))
    results.append(pair_check("registration_point.signing", material.signing, create_signing_pair,
                              f"the local MDM signing pair ({rp.signing_certificate}, {rp.signing_key})"))
    material = load_rp_material(instance) if repair else material

    # The local issuer's trust can always be restored: its certificate is ours.
    if rp.signing_certificate not in rp.trusted_signers:
        if repair and material.signing is not None:
            update_config_file(
                instance.path(CONFIG_FILE),
                {"registration_point": {"trusted_signers": (*rp.trusted_signers, rp.signing_certificate)}},
            )
            results.append(CheckResult("registration_point.trust.local", WARN,
                                       f"the local signing certificate {rp.signing_certificate} was not trusted; trust restored"))
        else:
            results.append(CheckResult(
                "registration_point.trust.local", FAIL,
                f"the local signing certificate {rp.signing_certificate} is not among [registration_point] trusted_signers, "
                "so every challenge from 'scepd challenge issue' fails with SigningCertThumbprintMismatch",
                f"scepd doctor --fix (or scepd registry trust add {rp.signing_certificate})",
            ))
    else:
        results.append(CheckResult("registration_point.trust.local", PASS, "the local signing certificate is trusted"))

    # Third-party signing certificates cannot be re-created: name them and the command.
    for name in rp.trusted_signers:
        if name == rp.signing_certificate:
            continue
        cert = _try_certificate(instance, name)
        if cert is None:
            results.append(CheckResult(
                f"registration_point.trust.{Path(name).name}", FAIL,
                f"trusted signing certificate {name} is missing or unreadable",
                f"restore {instance.path(name)} from the MDM, or scepd registry trust remove {name}",
            ))
        else:
            results.append(certificate_validity(f"registration_point.trust.{Path(name).name}", cert,
                                   "get the MDM's new signing certificate and 'scepd registry trust add' it", ca.clock))
    return results


# --- API tokens -----------------------------------------------------------------------------


# The first hex digits of a token's SHA-256 name it in `scepd registry token list|revoke`: 48
# bits tell two tokens apart, and a digest prefix tells nothing about the token itself.
TOKEN_ID_DIGITS = 12
# Fewer digits than this are refused by revoke (as git refuses abbreviations under 4): one typed
# digit would otherwise revoke whichever token happens to start with it.
MIN_TOKEN_PREFIX = 4
# Set, it replaces scepd.toml's api_tokens (SCEPD_<SECTION>_<KEY>): the servers accept these.
TOKENS_ENV = "SCEPD_REGISTRATION_POINT_API_TOKENS"


class TokenError(ValueError):
    """A token ID that names no token, or more than one, or one scepd.toml does not hold."""


@dataclass(frozen=True)
class ApiToken:
    id: str  # the first TOKEN_ID_DIGITS of digest
    digest: str  # SHA-256 of the token, as stored
    source: str  # "scepd.toml", or TOKENS_ENV when the environment sets the tokens


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _file_tokens(instance: Instance) -> tuple[str, ...]:
    """The digests scepd.toml itself holds, without the environment's override (which must
    never be written into the file)."""
    return load_config(instance.path(CONFIG_FILE), environ={}).registration_point.api_tokens


def new_api_token(instance: Instance) -> str:
    """A bearer token for the HTTP APIs; only its SHA-256 is stored in scepd.toml."""
    token = secrets.token_urlsafe(32)
    update_config_file(instance.path(CONFIG_FILE),
                       {"registration_point": {"api_tokens": (*_file_tokens(instance), token_digest(token))}})
    return token


def list_api_tokens(instance: Instance) -> list[ApiToken]:
    """The tokens the servers accept, in the order they were added."""
    source = TOKENS_ENV if TOKENS_ENV in os.environ else CONFIG_FILE
    digests = dict.fromkeys(instance.config.registration_point.api_tokens)  # once each, in order
    return [ApiToken(d[:TOKEN_ID_DIGITS], d, source) for d in digests]


def revoke_api_token(instance: Instance, prefix: str) -> ApiToken:
    """Remove the one token whose digest starts with `prefix` from scepd.toml; running servers
    reload the file within seconds. TokenError when the prefix is malformed, names no token or
    several, or when the environment sets the tokens (the file would not matter)."""
    wanted = prefix.strip().lower()
    if len(wanted) < MIN_TOKEN_PREFIX or any(c not in "0123456789abcdef" for c in wanted):
        raise TokenError(f"a token ID is at least {MIN_TOKEN_PREFIX} hex digits (scepd registry token list shows them), "
                         f"not {prefix!r}")
    tokens = list_api_tokens(instance)
    matches = [t for t in tokens if t.digest.startswith(wanted)]
    if not matches:
        known = ", ".join(t.id for t in tokens) or "none"
        raise TokenError(f"no API token has an ID starting with {wanted}; the tokens are: {known}")
    if len(matches) > 1:
        raise TokenError(f"{wanted} starts the IDs of {len(matches)} tokens ({', '.join(t.id for t in matches)}): "
                         "give more digits")
    token = matches[0]
    if token.source == TOKENS_ENV:
        raise TokenError(f"the API tokens come from {TOKENS_ENV}, which overrides scepd.toml: "
                         f"remove {token.digest} there")
    update_config_file(instance.path(CONFIG_FILE),
                       {"registration_point": {"api_tokens": tuple(d for d in _file_tokens(instance) if d != token.digest)}})
    return token


def token_accepted(token: str, digests: tuple[str, ...]) -> bool:
    """Constant-time comparison against every stored digest."""
    digest = token_digest(token)
    return any([hmac.compare_digest(digest, d) for d in digests])  # a list: no short-circuit


# --- trusted signing certificates and settable entries ----------------------------------------


# Where `trust_add` keeps the certificates it is given, named by their thumbprint.
TRUSTED_DIR = "rp/trusted"


class TrustError(ValueError):
    """A name or thumbprint that names none of the trusted signing certificates."""


class EntryError(ConfigError):
    """An entry `set_entry` does not know, or a template mapping to a template that does not exist."""


@dataclass(frozen=True)
class TrustedSigner:
    name: str  # as listed in [registration_point] trusted_signers
    certificate: x509.Certificate
    newly_listed: bool  # False: it was trusted already (its file is rewritten all the same)


def trust_add(instance: Instance, certificate: x509.Certificate) -> TrustedSigner:
    """Trust MDM challenges signed by `certificate`'s key: keep a copy under TRUSTED_DIR and
    list it in trusted_signers (once). Running servers reload scepd.toml within seconds."""
    name = f"{TRUSTED_DIR}/{jose_thumbprint(certificate)[:16]}.pem"
    path = instance.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_certificate(certificate, path)
    listed = instance.config.registration_point.trusted_signers
    if name not in listed:
        update_config_file(instance.path(CONFIG_FILE), {"registration_point": {"trusted_signers": (*listed, name)}})
    return TrustedSigner(name, certificate, name not in listed)


def _names_signer(instance: Instance, name: str, which: str) -> bool:
    """Is `which` the trusted_signers entry `name`: the entry itself, its file name, or the
    thumbprint of the certificate in it?"""
    path = instance.path(name)
    if which in (name, path.name):
        return True
    cert = _try_certificate(instance, name)
    return cert is not None and jose_thumbprint(cert) == which


def trust_remove(instance: Instance, which: str) -> tuple[str, ...]:
    """Stop trusting the signing certificates `which` names (an entry of trusted_signers, its
    file name, or its certificate's thumbprint); returns the entries removed. Their files stay,
    for the record. TrustError when `which` names none."""
    listed = instance.config.registration_point.trusted_signers
    removed = tuple(name for name in listed if _names_signer(instance, name, which))
    if not removed:
        raise TrustError(f"no trusted signer {which!r}; trusted: {', '.join(listed) or 'none'}")
    kept = tuple(name for name in listed if name not in removed)
    update_config_file(instance.path(CONFIG_FILE), {"registration_point": {"trusted_signers": kept}})
    return removed


# What `scepd registry set` may change: the name an administrator types -> (section, key) in
# scepd.toml. The rest of the registry is made by commands (trust, token) or by scepd init.
SETTABLE = {
    "challenge_lifetime": ("registration_point", "challenge_lifetime"),
    "clock_skew": ("registration_point", "clock_skew"),
    "audience": ("registration_point", "audience"),
    "issuer": ("registration_point", "issuer"),
    "SignatureTemplate": ("template_mapping", "SignatureTemplate"),
    "EncryptionTemplate": ("template_mapping", "EncryptionTemplate"),
    "GeneralPurposeTemplate": ("template_mapping", "GeneralPurposeTemplate"),
}


def set_entry(instance: Instance, entry: str, value: str) -> tuple[str, str]:
    """Set one SETTABLE entry in scepd.toml; returns its (section, key). EntryError for an
    unknown entry or a mapping to no template, ConfigError for a value the configuration
    refuses (the file is then left as it was)."""
    if entry not in SETTABLE:
        raise EntryError(f"unknown entry {entry!r}; settable: {', '.join(SETTABLE)}")
    section, key = SETTABLE[entry]
    if section == "template_mapping" and value not in instance.config.templates:
        raise EntryError(f"no template {value!r}; known: {', '.join(sorted(instance.config.templates))}")
    update_config_file(instance.path(CONFIG_FILE), {section: {key: value}})
    return section, key
