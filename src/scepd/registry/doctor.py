"""`scepd doctor`: every check the instance can fail, each with its reason and fix.

The same checks `scepd serve` runs at start, plus those that only warn, in one list. Nothing
here raises for a broken instance: what cannot be loaded becomes a FAIL naming the entry.
With `fix`, what is safe to mend is mended and said so.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable
from urllib.parse import urlsplit

from scepd.ca.ocsp_signer import DelegatedSigners, signer_findings
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.registry.checks import (
    FAIL,
    PASS,
    WARN,
    CheckResult,
    check_database_permissions,
    check_intune_approval,
    check_material,
    check_store,
    check_template_issuers,
    check_template_mapping,
    check_validators,
)
from scepd.registry.config import parse_duration
from scepd.registry.instance import Instance, InstanceError, load_key_material
from scepd.registry.keyops import reset_template_mapping
from scepd.registry.rp import check_registration_point
from scepd.registry.tls import check_tls

CLOCK_TOLERANCE = dt.timedelta(minutes=5)


def _key_permissions(instance: Instance, fix: bool) -> list[CheckResult]:
    config = instance.config
    rp = config.registration_point
    names = [config.ca.key, config.ra.key, rp.encryption_key, rp.signing_key, *config.ca.previous_keys,
             *config.ra.previous_keys, config.ca.next_key, config.ra.next_key, "scepd.toml",
             *(config.server.tls_files[1:] if config.server.tls_files else ())]
    results = []
    for name in filter(None, dict.fromkeys(names)):
        path = instance.path(name)
        if not path.exists():
            continue  # its own check reports a missing file
        mode = stat.S_IMODE(path.stat().st_mode)
        if not mode & 0o077:
            continue
        if fix:
            os.chmod(path, 0o600)
            results.append(CheckResult(f"permissions.{name}", WARN, f"{path} was mode {mode:o}; set to 600"))
        else:
            results.append(CheckResult(f"permissions.{name}", FAIL, f"{path} is mode {mode:o}: others can read a secret", f"chmod 600 {path}"))
    if not results:
        results.append(CheckResult("permissions", PASS, "key files and scepd.toml are private (600)"))
    return results


def _clock(clock: Clock, store, material) -> CheckResult:
    now = clock.now()
    if material is not None and material.ca.certificate.not_valid_before_utc > now + CLOCK_TOLERANCE:
        return CheckResult("clock", FAIL, "the CA certificate starts in the future: the system clock is behind",
                           "set the clock (NTP) before serving")
    try:
        newest = store.list_certificates(limit=1)
    except Exception:  # the database check reports this
        newest = []
    if newest and newest[0].not_before > now + CLOCK_TOLERANCE:
        return CheckResult("clock", FAIL, f"the newest certificate starts at {newest[0].not_before:%Y-%m-%d %H:%M}Z, "
                           "later than now: the clock went back", "set the clock (NTP)")
    return CheckResult("clock", PASS, f"{now:%Y-%m-%d %H:%M:%S}Z is consistent with the CA and the store")


def _urls(instance: Instance) -> CheckResult:
    config = instance.config
    problems = []
    for label, url in (("[server] public_url", config.server.public_url), ("[challenge] remote_url", config.challenge.remote_url),
                       ("[challenge] token_url", config.challenge.token_url), ("[challenge] webhook_url", config.challenge.webhook_url),
                       *((f"[notifications] webhooks {u}", u) for u in config.notifications.webhooks)):
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"{label} = {url!r} is not an http(s) URL")
    if config.challenge.mode == "remote" and not config.challenge.remote_url:
        problems.append("[challenge] mode = 'remote' needs remote_url")
    if problems:
        return CheckResult("urls", FAIL, "; ".join(problems), "edit scepd.toml")
    base = config.server.publication_url
    if urlsplit(base).hostname in ("0.0.0.0", "::"):
        return CheckResult("urls", WARN, f"issued certificates would point at {base}/crl/..., which no client can reach",
                           "set [server] public_url")
    return CheckResult("urls", PASS, f"CRLs are published under {base}/crl/")


def check_ocsp_signers(instance: Instance, material, repair: bool, clock: Clock = SYSTEM_CLOCK) -> CheckResult:
    """The delegated OCSP signers: present, issued by their CA, not near their end; with
    `repair` (at start, `doctor --fix`) created when they are not."""
    c = instance.config.ocsp
    if c.signer == "ca":
        return CheckResult("ocsp.signer", PASS, "OCSP responses are signed by the CA key ([ocsp] signer = \"ca\")")
    signers = DelegatedSigners(instance.path(c.directory), instance.passphrase, parse_duration(c.signer_validity), clock)
    problems, notes = signer_findings(signers, material.all_cas, repair)
    if problems:
        return CheckResult("ocsp.signer", WARN, "; ".join(problems),
                           "scepd serve re-creates it at start, or run scepd doctor --fix")
    return CheckResult("ocsp.signer", PASS, "; ".join(notes))  # created at start is the normal course


# Builds the registration point's validators from an instance. The caller hands it in: the
# builders belong to the layer above (they assemble challenge/ from the configuration), and
# run after the checks here have re-created what the validators load.
BuildValidators = Callable[[Instance], object]
RemoteChecks = Callable[[Instance], list[CheckResult]]


def startup_checks(instance: Instance, material, store, validators: BuildValidators) -> list[CheckResult]:
    """What `scepd serve` runs before it listens: a FAIL stops it. What is always safe to
    re-create is re-created and reported as a WARN: missing tables, the registration
    point's encryption pair, the local signing pair and its trust, the database files'
    mode (600)."""
    return check_material(instance, material) + [
        check_template_mapping(instance),
        check_template_issuers(instance, material),
        *check_intune_approval(instance),
        *check_registration_point(instance, material.ca, repair=True),
        check_ocsp_signers(instance, material, repair=True, clock=material.ca.clock),
        *check_tls(instance, material.ca, repair=True, clock=material.ca.clock),
        check_store(instance, store, repair=True),
        check_database_permissions(store, repair=True),
        check_validators(validators(instance)),
    ]


def run_doctor(instance: Instance, validators: BuildValidators, fix: bool = False,
               clock: Clock = SYSTEM_CLOCK, remote: RemoteChecks | None = None) -> list[CheckResult]:
    """Every check; `remote` asks the services the registration point depends on (Intune:
    Entra's tokens and Graph's endpoint list), which only the layer above knows how to reach."""
    results: list[CheckResult] = []
    try:
        material = load_key_material(instance, clock)
    except InstanceError as exc:
        material = None
        results.append(CheckResult(f"keys {exc.entry}", FAIL, exc.reason, exc.fix))
    if material is not None:
        results += check_material(instance, material)
        results.append(check_template_issuers(instance, material))

    mapping = check_template_mapping(instance)
    if mapping.status == FAIL and fix:
        reset_template_mapping(instance)
        mapping = CheckResult("template_mapping", WARN, f"{mapping.reason}; reset all three to the default")
    results.append(mapping)

    if material is not None:
        results += check_registration_point(instance, material.ca, repair=fix)
        results.append(check_ocsp_signers(instance, material, repair=fix, clock=clock))
    try:
        results.append(check_validators(validators(instance)))
    except InstanceError as exc:
        results.append(CheckResult("challenge.validators", FAIL, exc.reason, exc.fix))
    results += check_intune_approval(instance)
    if remote is not None:
        results += remote(instance)
    results += _key_permissions(instance, fix)

    store = instance.open_store()
    try:
        results.append(check_store(instance, store, repair=fix))
        results.append(check_database_permissions(store, repair=fix))
        results.append(_clock(clock, store, material))
    finally:
        store.dispose()
    results.append(_urls(instance))
    results += check_tls(instance, material.ca if material is not None else None, repair=fix, clock=clock)
    return results


def exit_code(results: list[CheckResult]) -> int:
    """0: all pass; 1: warnings; 2: failures."""
    statuses = {r.status for r in results}
    return 2 if FAIL in statuses else 1 if WARN in statuses else 0
