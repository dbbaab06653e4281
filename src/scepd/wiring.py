"""The composition root: the only module that turns an instance directory and its
configuration into validators, tokens, a store and the services. `server/` and the CLI call
`build_services`; nothing else assembles these parts.
May import: every package (it is the top of the stack, below server/ and cli/ only).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from scepd import __version__, metrics
from scepd.ca.crl import CrlPublisher
from scepd.ca.ocsp import OcspResponder
from scepd.ca.ocsp_signer import CaSigns, DelegatedSigners
from scepd.ca.templates import Template, TemplateMapping
from scepd.challenge import (
    ChallengeValidator,
    FirstAccepting,
    OneTimePasswordValidator,
    StaticChallengeValidator,
)
from scepd.challenge.mdm import MdmChallengeValidator
from scepd.challenge.remote import (
    BearerToken,
    RemoteRegistrationPoint,
    WebhookValidator,
)
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.intune import Discovery, IntuneConnection, IntuneNotifier, IntuneValidator, TokenSource
from scepd.intune.probe import IntuneProbe, probe
from scepd.intune.revocation import IntuneRevocations, Revoker
from scepd.notifications import Dispatcher
from scepd.protocol.requests import RequestPolicy
from scepd.registry.checks import FAIL, PASS, CheckResult
from scepd.registry.config import CONFIG_FILE, parse_duration
from scepd.registry.instance import Instance, KeyMaterial, load_key_material
from scepd.registry.rp import load_rp_material
from scepd.service.admin import Actor, Administration
from scepd.service.authorities import Authorities
from scepd.service.ca_certs import CaCertificates
from scepd.service.enroll import DeliveryGate, Enrollment
from scepd.service.issuance import Issuance
from scepd.service.pki import ScepService
from scepd.service.retrieve import Retrieval
from scepd.service.rp_api import RegistrationPointApi
from scepd.service.selection import TemplateChoice
from scepd.store import Store
from scepd.store.states import NotificationKind


# Who revokes what Intune's revocation requests name, as the audit trail records it.
INTUNE_ACTOR = Actor("intune", "revocation request")


def remote_token(instance: Instance) -> BearerToken:
    c = instance.config.challenge
    return BearerToken(c.remote_token, c.token_url, c.client_id, c.client_secret, c.scope, c.remote_timeout)


def build_local_validator(instance: Instance, clock: Clock = SYSTEM_CLOCK) -> ChallengeValidator:
    """The registration point in this process: MDM challenges, the static challenge,
    one-time passwords and the MDM webhook, as configured; the first that accepts wins."""
    rp = instance.config.registration_point
    challenge = instance.config.challenge
    material = load_rp_material(instance)
    validators: list[ChallengeValidator] = [
        MdmChallengeValidator(
            encryption=(material.encryption.certificate, material.encryption.key) if material.encryption else None,
            trusted_signers=material.trusted,
            audience=rp.audience,
            clock_skew=parse_duration(rp.clock_skew),
            max_lifetime=parse_duration(rp.challenge_lifetime),
            clock=clock,
        )
    ]
    if challenge.static:
        validators.append(StaticChallengeValidator(challenge.static))
    if challenge.one_time_passwords:
        validators.append(OneTimePasswordValidator())
    if challenge.webhook_url:
        validators.append(WebhookValidator(challenge.webhook_url, instance.config.notifications.hmac_secret,
                                           challenge.remote_timeout))
    return FirstAccepting(tuple(validators))


def build_intune_validator(instance: Instance) -> IntuneValidator:
    """[challenge] mode = "intune": Intune validates every request. Its tokens and service
    endpoints are cached in the process, not in the validator, so rebuilding the services
    after a configuration change fetches neither again."""
    c = instance.config.intune
    files, problems = {}, []
    for key in ("client_certificate", "client_key"):
        name = getattr(c, key)
        try:
            files[key] = instance.path(name).read_bytes() if name else b""
        except OSError as exc:
            files[key] = b""
            problems.append(f"[intune] {key} {name} cannot be read: {exc.strerror}")
    ca_bundle = str(instance.path(c.ca_bundle)) if c.ca_bundle else ""
    timeout = float(instance.config.challenge.remote_timeout)
    tokens = TokenSource(c.authority_url, c.tenant_id, c.client_id, c.client_secret,
                         files["client_certificate"], files["client_key"], ca_bundle, timeout)
    if tokens.client_certificate and tokens.client_key:
        try:
            tokens.client_assertion()  # signs nothing that is sent: it proves the pair loads
        except (ValueError, TypeError) as exc:
            problems.append(f"[intune] client_certificate and client_key cannot sign an assertion: {exc}")
    if ca_bundle and not Path(ca_bundle).is_file():
        problems.append(f"[intune] ca_bundle {ca_bundle} does not exist")
    intune = IntuneConnection(tokens, Discovery(c.graph_url, tokens, timeout), c.caller_info or f"scepd/{__version__}",
                              timeout)
    return IntuneValidator(intune, problems=tuple(problems))


def intune_check(instance: Instance) -> tuple[IntuneProbe | None, list[CheckResult]]:
    """What `scepd intune check` and `scepd doctor` report in intune mode: the settings the
    validator needs, then Entra's tokens and Graph's endpoint list (no call to Intune's
    services: a check is neither a validation nor a notification). (None, []) in other modes."""
    if instance.config.challenge.mode != "intune":
        return None, []
    validator = build_intune_validator(instance)
    unready = [text for ready, text in validator.readiness() if not ready]
    if unready:
        return None, [CheckResult("intune.settings", FAIL, "; ".join(unready),
                                  "fill in [intune] in scepd.toml (docs/intune.md, step 4)")]
    found = probe(validator.intune.tokens, validator.intune.discovery)
    return found, [CheckResult(step.name, PASS if step.passed else FAIL, step.reason, step.fix) for step in found.steps]


def build_validator(instance: Instance, local: ChallengeValidator, token: BearerToken | None = None) -> ChallengeValidator:
    """What the SCEP server asks: the `local` registration point, or a remote one (with
    `token`, shared by the caller so that an OAuth2 token is fetched once per process)."""
    challenge = instance.config.challenge
    if challenge.mode == "remote":
        return RemoteRegistrationPoint(challenge.remote_url, token or remote_token(instance), challenge.remote_timeout)
    if challenge.mode == "intune":
        return build_intune_validator(instance)
    return local


def delivery_gate(validator: ChallengeValidator) -> DeliveryGate | None:
    """Who is told of a certificate before it is delivered: Intune, when it validates
    (with the validator's own tokens and discovery); nobody otherwise."""
    if isinstance(validator, IntuneValidator):
        return IntuneNotifier(validator.intune)
    return None


def build_validators(instance: Instance) -> ChallengeValidator:
    """What the SCEP server of `instance` asks, as `scepd serve` builds it (start-up checks
    and doctor read its readiness)."""
    return build_validator(instance, build_local_validator(instance))


def notification_targets(instance: Instance) -> dict[str, tuple[str, ...]]:
    """Where successes and failures are told: the webhooks and, in remote mode, the
    registration point's notification endpoints (as Intune expects them)."""
    config = instance.config
    kinds = (NotificationKind.SUCCESS.value, NotificationKind.FAILURE.value)
    targets = {kind: config.notifications.webhooks for kind in kinds}
    if config.challenge.mode == "remote":
        base = config.challenge.remote_url.rstrip("/")
        targets = {kind: (*urls, f"{base}/{kind}Notification") for kind, urls in targets.items()}
    return targets


def authorities_of(material: KeyMaterial) -> Authorities:
    return Authorities(ca=material.ca, ra=material.ra, all_cas=material.all_cas, all_ras=material.all_ras)


def ca_certificates_of(material: KeyMaterial) -> CaCertificates:
    return CaCertificates(offered=material.ca_ra_certificates, ca=material.ca.certificate, ra=material.ra,
                          overlapping=bool(material.previous_cas), next_certificates=material.next_ca_ra_certificates)


@dataclass(frozen=True)
class Services:
    """Everything the HTTP routes and the CLI call, built from one instance."""

    instance: Instance
    store: Store
    scep: ScepService
    admin: Administration
    rp_api: RegistrationPointApi
    ocsp: OcspResponder | None = None  # None: /ocsp answers 404
    # (role, certificate) whose days to expiry /metrics reports: the CAs, the RAs, the
    # registration point's own pairs (server/metrics.py).
    certificates: tuple[tuple[str, x509.Certificate], ...] = ()


def build_services(instance: Instance, store: Store, token: BearerToken | None = None, *,
                   material: KeyMaterial | None = None, clock: Clock = SYSTEM_CLOCK) -> Services:
    """The services of `instance` on `store`. `token` is shared by the caller across rebuilds
    (one OAuth2 token per process); `material` when the caller has loaded the keys already."""
    config = instance.config
    local = build_local_validator(instance, clock)  # reads the registration point's files once
    validator = build_validator(instance, local, token)
    material = material or load_key_material(instance, clock)
    scep, admin = build_deciders(
        material=material, store=store,
        validator=metrics.TimedValidator(validator), templates=config.templates, mapping=config.template_mapping,
        policy=RequestPolicy(max_clock_skew=parse_duration(config.scep.max_clock_skew),
                             allow_md5=config.scep.allow_md5, allow_des=config.scep.allow_des),
        crl_validity=parse_duration(config.crl.validity), notify=notification_targets(instance), clock=clock,
        gate=timed(delivery_gate(validator), metrics.TimedGate),
    )
    return Services(instance=instance, store=store, scep=scep, admin=admin,
                    rp_api=RegistrationPointApi.from_instance(instance, local, store),
                    ocsp=build_ocsp(instance, material, store, clock),
                    certificates=watched_certificates(instance, material))


def timed(part, wrapper):
    """`part` (a validator, a delivery gate) with its calls timed for /metrics; None stays None."""
    return None if part is None else wrapper(part)


def watched_certificates(instance: Instance, material: KeyMaterial) -> tuple[tuple[str, x509.Certificate], ...]:
    """The certificates an administrator must renew in time, by role, for /metrics."""
    cas = [material.ca, *material.previous_cas, *([material.next_ca] if material.next_ca else [])]
    ras = [material.ra, *material.previous_ras, *([material.next_ra] if material.next_ra else [])]
    rp = load_rp_material(instance)
    pairs = [("registration_point", p.certificate) for p in (rp.encryption, rp.signing) if p is not None]
    return (*(("ca", ca.certificate) for ca in cas), *(("ra", ra.certificate) for ra in ras), *pairs,
            *(("trusted_signer", c) for c in rp.trusted))


def build_ocsp(instance: Instance, material: KeyMaterial, store: Store, clock: Clock = SYSTEM_CLOCK) -> OcspResponder:
    """The OCSP responder for every CA of `instance`. Its delegated signers are read (and
    created when due) at the first response or at `prepare()`, which `scepd serve` calls."""
    config = instance.config
    c = config.ocsp
    # A response outliving the CRL would vouch for a status longer than the CA's own list does.
    validity = min(parse_duration(c.validity), parse_duration(config.crl.validity))
    if c.signer == "ca":
        signers = CaSigns()
    else:
        signers = DelegatedSigners(instance.path(c.directory), instance.passphrase,
                                   parse_duration(c.signer_validity), clock)
    return OcspResponder(store, material.all_cas, signers, validity, clock, c.cache_size)


def build_deciders(*, material: KeyMaterial, store: Store, validator: ChallengeValidator, templates: dict[str, Template],
                   mapping: TemplateMapping, policy: RequestPolicy, crl_validity: dt.timedelta = dt.timedelta(days=7),
                   notify: dict[str, tuple[str, ...]] | None = None,
                   clock: Clock = SYSTEM_CLOCK, gate: DeliveryGate | None = None) -> tuple[ScepService, Administration]:
    """The SCEP service and the administration from their parts, with no instance directory
    (tests and the benchmark assemble them this way, from keys they hold)."""
    notify = notify or {}
    authorities = authorities_of(material)
    crls = CrlPublisher(store, crl_validity, clock=clock)
    issuance = Issuance(authorities=authorities, crls=crls, notify=notify, clock=clock)
    choice = TemplateChoice(templates=templates, mapping=mapping, authorities=authorities)
    enrollment = Enrollment(store=store, validator=validator, choice=choice, issuance=issuance,
                            authorities=authorities, clock=clock, gate=gate)
    retrieval = Retrieval(store=store, authorities=authorities, crls=crls, issuance=issuance, clock=clock)
    scep = ScepService(authorities=authorities, ca_certificates=ca_certificates_of(material), policy=policy,
                       enrollment=enrollment, retrieval=retrieval, crls=crls, store=store, notify=notify, clock=clock)
    admin = Administration(store=store, templates=templates, authorities=authorities, issuance=issuance,
                           crls=crls, clock=clock)
    return scep, admin


@dataclass(frozen=True)
class ConsoleFacts:
    """What the console shows of the instance beside the administration's records: the
    one-time passwords' lifetime (None when they are off), the request log, the certificates
    that expire (CA, RA, registration point) and doctor's findings (asked for when shown)."""

    otp_validity: dt.timedelta | None
    log_file: Path | None
    certificates: tuple[tuple[str, object], ...]  # (role, x509.Certificate)
    doctor: object  # () -> [CheckResult]


def console_facts(services: Services) -> ConsoleFacts:
    from scepd.registry.doctor import run_doctor

    instance, authorities = services.instance, services.admin.authorities
    config = instance.config
    rp = load_rp_material(instance)
    certificates = [("CA", authorities.ca.certificate), *(("CA (other)", ca.certificate) for ca in authorities.all_cas[1:]),
                    ("RA", authorities.ra.certificate),
                    *((f"registration point {n}", p.certificate) for n, p in (("encryption", rp.encryption),
                                                                               ("signing", rp.signing)) if p)]
    return ConsoleFacts(
        otp_validity=parse_duration(config.challenge.otp_validity) if config.challenge.one_time_passwords else None,
        log_file=instance.path(config.logging.file) if config.logging.file else None,
        certificates=tuple(certificates), doctor=lambda: run_doctor(instance, build_validators))


def watched_files(directory: Path, overrides: Mapping[str, str] | None = None) -> list[Path]:
    """The files whose change makes a running server rebuild its services: scepd.toml and the
    registration point's keys and trusted signers, as the current configuration names them."""
    rp = Instance.open(directory, overrides).config.registration_point
    names = [rp.encryption_certificate, rp.encryption_key, *rp.trusted_signers]
    return [directory / CONFIG_FILE, *(directory / n for n in names)]


@dataclass(frozen=True)
class Background:
    """Threads the app's lifespan starts and stops together."""

    tasks: tuple

    def start(self) -> None:
        for task in self.tasks:
            task.start()

    def stop(self) -> None:
        for task in self.tasks:
            task.stop()


class ServedInstance:
    """One instance directory as `scepd serve` runs it in one worker process: one store (one
    database pool), the services rebuilt from the directory's files, one bearer token per
    remote-token setting kept across rebuilds (an OAuth2 token is fetched once and reused
    until it expires), and the notification dispatcher."""

    def __init__(self, directory: Path, overrides: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.overrides = dict(overrides or {})  # SCEPD_* settings `scepd serve` was given
        self.instance = Instance.open(directory, self.overrides)
        self.store = self.instance.open_store()
        self._tokens: dict[tuple, BearerToken] = {}

    @property
    def log_file(self) -> Path | None:
        file = self.instance.config.logging.file
        return self.instance.path(file) if file else None

    def token_for(self, instance: Instance) -> BearerToken:
        c = instance.config.challenge
        key = (c.remote_token, c.token_url, c.client_id, c.client_secret, c.scope)
        return self._tokens.setdefault(key, remote_token(instance))

    def build(self) -> Services:
        """The services as the directory's files are now."""
        fresh = Instance.open(self.directory, self.overrides)
        services = build_services(fresh, self.store, self.token_for(fresh))
        services.ocsp.prepare()  # the delegated signers exist before the first query
        return services

    def watched(self) -> list[Path]:
        return watched_files(self.directory, self.overrides)

    def revocations(self) -> IntuneRevocations | None:
        """In intune mode with a `revocation_poll_interval`: the loop that carries out Intune's
        revocation requests, through the services as the directory's files are at each round."""
        config = self.instance.config
        setting = config.intune.revocation_poll_interval.strip()
        interval = 0.0 if setting in ("", "0") else parse_duration(setting).total_seconds()
        if config.challenge.mode != "intune" or interval <= 0:
            return None
        validator = build_intune_validator(self.instance)

        def revoker() -> Revoker:
            admin = self.build().admin
            return Revoker(admin.authorities.ca.certificate.subject.rfc4514_string(),
                           lambda serial, reason: admin.revoke(serial, reason, actor=INTUNE_ACTOR))

        return IntuneRevocations(self.store, validator.intune, revoker, interval=interval)

    def background(self) -> Background:
        """What runs beside the HTTP routes: the notification dispatcher and, in intune mode,
        the revocation loop."""
        return Background(tuple(task for task in (self.dispatcher(), self.revocations()) if task is not None))

    def dispatcher(self) -> Dispatcher:
        notifications, challenge = self.instance.config.notifications, self.instance.config.challenge
        tokens = {challenge.remote_url: self.token_for(self.instance)} if challenge.remote_url else {}
        return Dispatcher(self.store, hmac_secret=notifications.hmac_secret,
                          max_attempts=notifications.max_attempts, tokens=tokens)
