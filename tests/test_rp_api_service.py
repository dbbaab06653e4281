"""The registration point's API as a service (service/rp_api.py), without HTTP: who may call
it, the challenges it issues and refuses, Intune's validateRequest verdicts, and the
notifications it keeps."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt

import pytest
from conftest import CHALLENGE
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from scepd.client import build_csr
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.registry.instance import Instance, InstanceError, create_instance
from scepd.registry.rp import token_digest
from scepd.service.rp_api import RegistrationPointApi
from scepd.store import StoreUnavailable
from scepd.wiring import build_local_validator

KEY = rsa.generate_private_key(65537, 2048)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def csr_der(cn: str, challenge: str | None) -> bytes:
    return build_csr(KEY, name(cn), challenge=challenge).public_bytes(serialization.Encoding.DER)


def never_called(*_args):
    raise AssertionError("not expected to be called")


def offline_api(*, tokens=(), issuer=never_called, validator=None, store=None) -> RegistrationPointApi:
    return RegistrationPointApi(api_tokens=tuple(tokens), base_url="https://scep.example", challenge_issuer=issuer,
                                validator=validator, store=store)


@pytest.fixture(scope="module")
def instance_api(tmp_path_factory):
    """The API of a real instance (static challenge, MDM challenges) on its own store."""
    d = tmp_path_factory.mktemp("rp-api-service")
    create_instance(d, ca_subject="CN=RP API service CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    instance = Instance.open(d)
    store = instance.open_store()
    yield RegistrationPointApi.from_instance(instance, build_local_validator(instance), store), store, instance
    store.dispose()


def test_authorize_accepts_only_a_configured_bearer_token():
    api = offline_api(tokens=[token_digest("the-token"), token_digest("another")])
    assert api.has_tokens
    for header in ("Bearer the-token", "bearer the-token ", "BEARER another"):
        assert api.authorize(header) is None, header
    for header in (None, "", "the-token", "Basic the-token", "Bearer wrong", "Bearer ", "Bearer the-token2"):
        refusal = api.authorize(header)
        assert refusal == Refusal(ErrorCode.API_UNAUTHORIZED, "a valid bearer token is required"), header
        assert refusal.http_status == 401


def test_without_tokens_the_api_accepts_nobody():
    api = offline_api()
    assert not api.has_tokens
    refusal = api.authorize("Bearer anything")
    assert refusal.code is ErrorCode.API_UNAUTHORIZED and "scepd registry token new" in refusal.reason


@pytest.mark.parametrize("body,words", [
    (["subject", "CN=x"], "must be a JSON object"),
    ({"subject": "CN=x", "validity": 600}, "validity must be a duration"),
    ({"subject": "CN=x", "validity": "3651d"}, "3650d"),
    ({"subject": "CN=x", "validity": "soon"}, "soon"),
    ({"subject": "CN=x", "colour": "blue"}, "colour"),
    ({"subject": "not a DN"}, "not a DN"),
])
def test_issue_challenge_refuses_a_malformed_order_before_issuing(body, words):
    refusal = offline_api(issuer=never_called).issue_challenge(body)
    assert isinstance(refusal, Refusal) and refusal.code is ErrorCode.REQUEST_MALFORMED, refusal
    assert words in refusal.reason and refusal.http_status == 400


def test_issue_challenge_names_missing_keys_and_a_lifetime_beyond_the_allowed_one(instance_api):
    def missing(_expected, _lifetime):
        raise InstanceError("[registration_point] signing_certificate", "the signing pair is missing", "scepd doctor --fix")

    refusal = offline_api(issuer=missing).issue_challenge({"subject": "CN=x"})
    assert refusal.code is ErrorCode.REGISTRATION_POINT_KEY_MISSING and refusal.http_status == 503
    assert "scepd doctor --fix" in refusal.reason
    api, _, instance = instance_api
    lifetime = instance.config.registration_point.challenge_lifetime
    too_long = api.issue_challenge({"subject": "CN=x", "validity": "3650d"})
    assert too_long.code is ErrorCode.REQUEST_MALFORMED and lifetime in too_long.reason


def test_issue_challenge_answers_with_a_challenge_the_registration_point_accepts_once(instance_api):
    api, _, _ = instance_api
    order = {"subject": "CN=ordered", "validity": "10m"}
    before = dt.datetime.now(dt.timezone.utc)
    answer = api.issue_challenge(order)
    assert order == {"subject": "CN=ordered", "validity": "10m"}  # the caller's body is left alone
    assert set(answer) == {"challenge", "scep_url", "jti", "expires_at"}
    assert answer["scep_url"].endswith("/scep") and answer["jti"]
    expires = dt.datetime.fromisoformat(answer["expires_at"])
    assert dt.timedelta(minutes=9) < expires - before <= dt.timedelta(minutes=10, seconds=5)
    assert api.validate_request("T-ordered-1", csr_der("ordered", answer["challenge"])) is None
    replayed = api.validate_request("T-ordered-2", csr_der("ordered", answer["challenge"]))
    assert replayed.code is ErrorCode.CHALLENGE_REPLAYED
    mismatch = api.validate_request("T-ordered-3", csr_der("someone-else", api.issue_challenge(order)["challenge"]))
    assert mismatch.code is ErrorCode.SUBJECT_NAME_MISMATCH


def test_validate_request_gives_the_registration_points_verdict(instance_api):
    api, _, _ = instance_api
    assert api.validate_request("T-static", csr_der("static", CHALLENGE)) is None
    assert api.validate_request("T-wrong", csr_der("static", "not-the-challenge")).code is ErrorCode.CHALLENGE_PASSWORD_INCORRECT
    assert api.validate_request("T-none", csr_der("static", None)).code is ErrorCode.CHALLENGE_PASSWORD_MISSING
    broken = api.validate_request("T-broken", b"\x30\x03\x02\x01\x00")
    assert broken.code is ErrorCode.CSR_MALFORMED, broken


class UnavailableStore:
    @contextlib.contextmanager
    def unit_of_work(self):
        raise StoreUnavailable("database is locked")
        yield


def test_an_unavailable_store_is_a_named_refusal(instance_api):
    _, _, instance = instance_api
    offline = offline_api(validator=build_local_validator(instance), store=UnavailableStore())
    locked = Refusal(ErrorCode.STORE_UNAVAILABLE, "database is locked")
    refusal = offline.validate_request("T-locked", csr_der("locked", CHALLENGE))
    assert refusal == locked and refusal.http_status == 503
    assert offline.record_received("success", {"transactionId": "T-locked"}) == locked


def test_record_received_keeps_no_challenge(instance_api):
    api, store, _ = instance_api
    told = base64.b64encode(csr_der("told", "a-secret-challenge")).decode()
    assert api.record_received("success", {"transactionId": "T-told", "certificateRequest": told}) is None
    assert api.record_received("failure", {"transactionId": "T-garbled", "certificateRequest": "not base64!"}) is None
    assert api.record_received("failure", {"errorCode": "ChallengeReplayed"}) is None
    kept = {n["transaction_id"]: n for n in store.notifications()}
    stripped = base64.b64decode(kept["T-told"]["payload"]["certificateRequest"])
    assert b"a-secret-challenge" not in stripped and x509.load_der_x509_csr(stripped).subject == name("told")
    assert kept["T-told"]["kind"] == "received-success"
    assert kept["T-garbled"]["kind"] == "received-failure" and kept["T-garbled"]["payload"]["certificateRequest"] is None
    assert kept[""]["payload"] == {"errorCode": "ChallengeReplayed"}
