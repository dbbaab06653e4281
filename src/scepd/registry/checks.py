"""Start-up checks: each names what it looked at, PASS/WARN/FAIL, why, and the fix."""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from scepd.ca.chain import ChainError, check_path, describe
from scepd.ca.keys import KeyPair, is_key_uri
from scepd.ca.templates import DEFAULT_TEMPLATE
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.protocol.errors import KeyUnavailable
from scepd.registry.instance import Instance, KeyMaterial

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
EXPIRY_WARNING = dt.timedelta(days=30)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str
    reason: str
    fix: str = ""


def certificate_validity(name: str, cert: x509.Certificate, fix: str, clock: Clock = SYSTEM_CLOCK) -> CheckResult:
    """FAIL when expired or not yet valid, WARN within 30 days of expiry, else PASS."""
    now = clock.now()
    if cert.not_valid_after_utc <= now:
        return CheckResult(name, FAIL, f"expired on {cert.not_valid_after_utc:%Y-%m-%d}", fix)
    if cert.not_valid_before_utc > now:
        return CheckResult(name, FAIL, f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z", "check the system clock")
    if cert.not_valid_after_utc - now < EXPIRY_WARNING:
        return CheckResult(name, WARN, f"expires on {cert.not_valid_after_utc:%Y-%m-%d}", fix)
    return CheckResult(name, PASS, f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")


def check_material(instance: Instance, material: KeyMaterial) -> list[CheckResult]:
    ca_cert, ra_cert = material.ca.certificate, material.ra.certificate
    clock = material.ca.clock
    results = [
        certificate_validity("ca.validity", ca_cert, "scepd ca rollover, then scepd ca activate-next", clock),
        certificate_validity("ra.validity", ra_cert, "scepd ra renew", clock),
    ]
    try:
        ku = ra_cert.extensions.get_extension_for_class(x509.KeyUsage).value
        # Without an RA the CA signs CertReps and is encrypted to; its keyCertSign usage is
        # what clients look at then, so only a separate RA is held to the RA usages.
        ku_ok = ra_cert == ca_cert or (ku.digital_signature and ku.key_encipherment)
    except x509.ExtensionNotFound:
        ku_ok = True  # no extension: every usage allowed
    if not isinstance(ra_cert.public_key(), rsa.RSAPublicKey) or not ku_ok:
        results.append(
            CheckResult(
                "ra.key_usage",
                FAIL,
                "the RA certificate must be RSA with digitalSignature and keyEncipherment (clients encrypt to it)",
                "scepd ra renew",
            )
        )
    else:
        results.append(CheckResult("ra.key_usage", PASS, "RSA, digitalSignature + keyEncipherment"))
    try:
        ra_cert.verify_directly_issued_by(ca_cert)
        results.append(CheckResult("ra.issuer", PASS, "issued by the CA"))
    except Exception as exc:  # InvalidSignature, ValueError, TypeError: not signed by the CA
        results.append(CheckResult("ra.issuer", FAIL, f"the RA certificate is not signed by the CA ({exc or type(exc).__name__})", "scepd ra renew"))
    results += check_chain(material)
    for role, files in (("ca", instance.config.ca), ("ra", instance.config.ra)):
        if not files.key:
            continue
        if is_key_uri(files.key):
            results.append(check_token_key(f"{role}.key_token", material.ca.pair if role == "ca" else material.ra))
            continue
        path = instance.path(files.key)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            results.append(CheckResult(f"{role}.key_permissions", WARN, f"{path} is mode {mode:o}; others can read the key", f"chmod 600 {path}"))
        else:
            results.append(CheckResult(f"{role}.key_permissions", PASS, f"{path} is mode {mode:o}"))
    return results


def check_token_key(name: str, pair: KeyPair) -> CheckResult:
    """A token-held key (loading it proved the module, the token, the login and the object):
    it signs now, its signature verifies with its certificate, and the token keeps it
    sensitive and non-extractable."""
    from scepd.ca.token_keys import is_token_key, key_attributes
    from scepd.protocol import signatures

    key = pair.key
    if not is_token_key(key):
        return CheckResult(name, FAIL, "the URI names a key that is not held by a token", "name a pkcs11: object")
    probe = os.urandom(32)
    try:
        signature = signatures.sign(key, "sha256", probe)
        attributes = key_attributes(key)
    except KeyUnavailable as exc:
        return CheckResult(name, FAIL, exc.reason, "check the HSM is connected (pkcs11-tool --module MODULE --list-slots)")
    scheme = "rsassa_pkcs1v15" if isinstance(key, rsa.RSAPrivateKey) else "ecdsa"
    if not signatures.verify_signature(pair.certificate.public_key(), scheme, "sha256", probe, signature):
        return CheckResult(name, FAIL, f"{key.uri.display} signs, but not with its certificate's key", "name the object that belongs to the certificate")
    if attributes["extractable"] or not attributes["sensitive"]:
        return CheckResult(name, WARN, f"{key.uri.object}: the token would let the key out (CKA_EXTRACTABLE or not CKA_SENSITIVE)",
                           "generate a new key with CKA_SENSITIVE true and CKA_EXTRACTABLE false (scepd init --pkcs11 does)")
    return CheckResult(name, PASS, f"object {key.uri.object!r} in token {key.uri.path.get('token', '?')!r}: logged in, "
                                   "signs with its certificate's key, sensitive and non-extractable")


def check_chain(material: KeyMaterial) -> list[CheckResult]:
    """The active CA's (and the next CA's) path: each certificate a CA signed by the next,
    valid now, ending at a self-signed root ([ca] chain holds what is above ours)."""
    results = []
    now = material.ca.clock.now()
    for name, ca in (("ca.chain", material.ca), ("ca.next_chain", material.next_ca)):
        if ca is None:
            continue
        try:
            path = check_path(ca.certificate, material.chain, now)
        except ChainError as exc:
            results.append(CheckResult(name, FAIL, f"{exc.name}: {exc.reason}", f"{exc.fix}; [ca] chain names the file"))
            continue
        if not path:
            results.append(CheckResult(name, PASS, "the CA is its own root (self-signed)"))
        else:
            shown = " -> ".join(describe(c) for c in (ca.certificate, *path))
            results.append(CheckResult(name, PASS, f"{shown} (self-signed), each link signed and valid"))
    return results


def check_intune_approval(instance: Instance) -> list[CheckResult]:
    """In intune mode every template must issue at once: Intune is told of a certificate
    (successNotification, with the request as it validated it) before the device gets it, and a
    request held for `scepd requests approve` would be issued after its challenge expired and
    delivered without that notification. Intune's own assignment of the SCEP profile is the
    approval there."""
    if instance.config.challenge.mode != "intune":
        return []
    manual = sorted(name for name, template in instance.config.templates.items() if template.approval != "auto")
    if manual:
        return [CheckResult("intune.templates", FAIL,
                            f"template(s) {', '.join(manual)} hold requests for approval, which Intune cannot be told of",
                            f"set approval = \"auto\" in [templates.{manual[0]}] of scepd.toml; approve devices in "
                            "Intune by assigning the SCEP profile")]
    return [CheckResult("intune.templates", PASS, "every template issues at once, so Intune is told before delivery")]


def check_validators(validator) -> CheckResult:
    """FAIL when nothing could accept a request, read off the validators the server builds
    (a ChallengeValidator, given by the caller that builds them), not from a second reading of
    the configuration: a remote registration point, or locally MDM challenges with an
    encryption pair and trusted signers, the static challenge, one-time passwords, the MDM
    webhook."""
    parts = validator.readiness()
    able = [text for ready, text in parts if ready]
    unable = [text for ready, text in parts if not ready]
    if not able:
        return CheckResult(
            "challenge.validators", FAIL,
            "no validator can accept a request" + (f": {'; '.join(unable)}" if unable else ""),
            "set [challenge] static, one_time_passwords = true or webhook_url, or mode = \"remote\" with remote_url; "
            "for MDM challenges 'scepd doctor --fix' re-creates the registration point's pairs",
        )
    return CheckResult("challenge.validators", PASS, f"requests are accepted by {', '.join(able)}")


def check_template_mapping(instance: Instance) -> CheckResult:
    """A mapping that names a missing template would fail every request of that kind."""
    config = instance.config
    missing = config.template_mapping.missing(config.templates)
    if missing:
        named = "; ".join(f"[template_mapping] {key} names '{name}', which is not a template" for key, name in missing)
        return CheckResult(
            "template_mapping",
            FAIL,
            named,
            f"scepd templates reset-mapping --dir {instance.directory} (sets all three to {DEFAULT_TEMPLATE}), "
            "or define the template in scepd.toml",
        )
    return CheckResult("template_mapping", PASS, "every mapping key names an existing template")


def check_store(instance: Instance, store, repair: bool) -> CheckResult:
    try:
        problems = store.check_schema()
    except Exception as exc:  # any driver error: unreachable, bad URL, permissions
        return CheckResult("database", FAIL, f"cannot open {_safe_url(store.url)}: {exc}", "check [database] url")
    if not problems:
        return CheckResult("database", PASS, f"reachable, schema current ({_safe_url(store.url)})")
    if repair:
        store.upgrade()
        return CheckResult("database", WARN, f"{'; '.join(problems)}: upgraded")
    return CheckResult("database", FAIL, "; ".join(problems), f"scepd db upgrade --dir {instance.directory}")


def check_database_permissions(store, repair: bool) -> CheckResult:
    """The SQLite file and its -wal and -shm: 0600. It holds every request, certificate and
    notification; writable by others it would let them record certificates as issued."""
    loose = []
    for path in store.sqlite_files:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue  # -wal and -shm exist only while a connection is open
        if mode & 0o077:
            loose.append((path, mode))
    if not loose:
        if not store.sqlite_files:
            return CheckResult("database.permissions", PASS, "not a SQLite file: the database server guards its files")
        return CheckResult("database.permissions", PASS, f"{store.sqlite_files[0]} (and its -wal, -shm) is private (600)")
    named = ", ".join(f"{path} is mode {mode:o}" for path, mode in loose)
    fix = f"chmod 600 {' '.join(str(path) for path, _ in loose)} (or scepd doctor --fix)"
    if repair:
        try:
            for path, _ in loose:
                os.chmod(path, 0o600)
        except OSError as exc:
            return CheckResult("database.permissions", FAIL if _writable(loose) else WARN, f"{named}; chmod failed: {exc}", fix)
        return CheckResult("database.permissions", WARN, f"{named}: set to 600")
    if _writable(loose):
        return CheckResult("database.permissions", FAIL, f"{named}: others can write the records", fix)
    return CheckResult("database.permissions", WARN, f"{named}: others can read the requests and certificates", fix)


def _writable(loose: list) -> bool:
    return any(mode & 0o022 for _, mode in loose)


def _safe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def check_template_issuers(instance: Instance, material: KeyMaterial) -> CheckResult:
    known = {ca.key_id for ca in material.all_cas}
    wrong = [f"[templates.{t.name}] ca = '{t.ca}'" for t in instance.config.templates.values() if t.ca != "active" and t.ca not in known]
    if wrong:
        return CheckResult(
            "templates.ca", FAIL, f"{'; '.join(wrong)} names no configured CA (known: {', '.join(sorted(known))})",
            "set ca = \"active\" or a key id listed above",
        )
    return CheckResult("templates.ca", PASS, "every template's issuing CA is configured")
