"""One clock for every component that reads the time: a FixedClock moves the store, the CA,
the CRL publisher, one-time passwords, MDM challenges and the start-up checks years ahead
together, without sleeping and without patching a module's notion of now."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import name
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.ca.authority import BACKDATE, CertificateAuthority, create_root_ca
from scepd.ca.crl import CrlPublisher
from scepd.ca.keys import KeyPair
from scepd.ca.templates import Template
from scepd.challenge import (
    ChallengeRequest,
    OneTimePasswordValidator,
    new_one_time_password,
)
from scepd.challenge.mdm import ExpectedRequest, MdmChallengeValidator, issue_challenge
from scepd.client import build_csr
from scepd.clock import SYSTEM_CLOCK, FixedClock
from scepd.protocol.csr import parse_csr
from scepd.registry.checks import FAIL, PASS, certificate_validity
from scepd.store import Store

START = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def test_a_fixed_clock_stands_still_until_moved():
    clock = FixedClock(START)
    assert clock.now() == clock.now() == START
    assert clock.advance(dt.timedelta(days=400)) == START + dt.timedelta(days=400) == clock.now()
    clock.set(START)
    assert clock.now() == START
    with pytest.raises(ValueError, match="aware"):
        FixedClock(dt.datetime(2031, 3, 1))
    later = FixedClock(dt.datetime(2031, 3, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))).now()
    assert later == START and later.tzinfo is dt.timezone.utc
    assert SYSTEM_CLOCK.now().tzinfo is dt.timezone.utc


@pytest.fixture
def clock():
    return FixedClock(START)


@pytest.fixture
def store(tmp_path, clock):
    store = Store(f"sqlite:///{tmp_path / 'clock.db'}", clock=clock)
    store.upgrade()
    yield store
    store.dispose()


def _ca(clock) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    return CertificateAuthority(KeyPair(create_root_ca(name("Clock CA"), key, clock=clock), key), clock=clock)


def _csr(**kwargs):
    key = ec.generate_private_key(ec.SECP256R1())
    return parse_csr(build_csr(key, name("clocked"), **kwargs).public_bytes(Encoding.DER))


def test_the_ca_dates_what_it_issues_by_its_clock(clock):
    ca = _ca(clock)
    assert ca.certificate.not_valid_before_utc == START - BACKDATE
    clock.advance(dt.timedelta(days=365 * 3))
    cert = ca.issue(_csr(), Template(name="T", validity_days=30))
    assert cert.not_valid_before_utc == START + dt.timedelta(days=365 * 3) - BACKDATE
    assert cert.not_valid_after_utc == START + dt.timedelta(days=365 * 3 + 30)


def test_a_one_time_password_expires_by_the_stores_clock(store, clock):
    password, expires = new_one_time_password(store, dt.timedelta(hours=1))
    assert expires == START + dt.timedelta(hours=1)
    clock.advance(dt.timedelta(hours=1, seconds=1))
    with store.unit_of_work() as uow:
        verdict = OneTimePasswordValidator().verify(ChallengeRequest("T-otp", password, _csr()), uow)
    assert verdict.refusal.code.value == "OneTimePasswordExpired"


def test_the_crl_is_dated_by_its_clock_and_resigned_when_half_its_life_is_past(store, clock):
    ca = _ca(clock)
    crls = CrlPublisher(store, dt.timedelta(days=7), clock=clock)
    first = crls.current(ca)
    assert first.last_update_utc == START and first.next_update_utc == START + dt.timedelta(days=7)
    clock.advance(dt.timedelta(days=3))
    assert crls.current(ca).public_bytes(Encoding.DER) == first.public_bytes(Encoding.DER)  # still fresh
    clock.advance(dt.timedelta(days=1))
    second = crls.current(ca)
    assert second.last_update_utc == START + dt.timedelta(days=4)
    assert second.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_an_mdm_challenge_expires_by_the_validators_clock(store, clock):
    signing_key = ec.generate_private_key(ec.SECP256R1())
    encryption_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca(clock)
    signing = ca.issue_service_certificate(name("signing"), signing_key.public_key(), {"digitalSignature"}, 30)
    encryption = ca.issue_service_certificate(name("encryption"), encryption_key.public_key(), {"keyAgreement"}, 30)
    challenge, claims = issue_challenge(signing_certificate=signing, signing_key=signing_key, encryption_certificate=encryption,
                                        expected=ExpectedRequest(subject="CN=clocked"), issuer="mdm", audience="rp",
                                        lifetime=dt.timedelta(minutes=30), clock=clock)
    assert claims["iat"] == int(START.timestamp())
    validator = MdmChallengeValidator((encryption, encryption_key), (signing,), "rp", clock_skew=dt.timedelta(minutes=5),
                                      clock=clock)
    clock.advance(dt.timedelta(minutes=36))
    with store.unit_of_work() as uow:
        verdict = validator.verify(ChallengeRequest("T-mdm", challenge, _csr()), uow)
    assert verdict.refusal.code.value == "ChallengeExpired"


def test_the_start_up_checks_read_the_same_clock(clock):
    ca = _ca(clock)
    assert certificate_validity("ca.validity", ca.certificate, "renew", clock).status == PASS
    clock.advance(dt.timedelta(days=3651))
    assert certificate_validity("ca.validity", ca.certificate, "renew", clock).status == FAIL
