"""The deciders without HTTP or CMS: typed requests in, Outcomes and Refusals out, the time
read from a FixedClock instead of skewing certificates by years."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import CHALLENGE, name, new_key
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.challenge.otp import new_one_time_password
from scepd.client import build_csr, parse_san
from scepd.client.client import self_signed
from scepd.clock import FixedClock
from scepd.protocol import MessageType, PkiStatus
from scepd.protocol.csr import parse_csr
from scepd.protocol.enveloped import ContentCipher
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.protocol.message import Exchange
from scepd.protocol.requests import CertPoll, GetCert, PkcsReq, RenewalReq
from scepd.registry.config import update_config_file
from scepd.registry.instance import Instance, create_instance
from scepd.wiring import build_services


@pytest.fixture(scope="module")
def clock():
    return FixedClock(dt.datetime.now(dt.timezone.utc))


@pytest.fixture(scope="module")
def services(tmp_path_factory, clock):
    d = tmp_path_factory.mktemp("deciders")
    create_instance(d, ca_subject="CN=Decider CA", key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(d / "scepd.toml", {"templates": {"Manual": {"approval": "manual"}},
                                          "template_mapping": {"EncryptionTemplate": "Manual"}})
    instance = Instance.open(d)
    store = instance.open_store()
    built = build_services(instance, store, clock=clock)
    yield built
    store.dispose()


def exchange(kind: MessageType, signer, transaction_id: str) -> Exchange:
    return Exchange(kind, transaction_id, b"nonce-1234567890", "sha256", signer, ContentCipher.AES_128_CBC)


def pkcs_req(cn: str, *, key=None, challenge=CHALLENGE, signer=None, transaction_id=None, renewal=False, **csr_options):
    key = key or new_key()
    signer = signer or self_signed(key, name(cn))
    csr = parse_csr(build_csr(key, name(cn), challenge=challenge, **csr_options).public_bytes(Encoding.DER))
    kind = MessageType.RENEWAL_REQ if renewal else MessageType.PKCS_REQ
    request_type = RenewalReq if renewal else PkcsReq
    return request_type(exchange(kind, signer, transaction_id or f"T-{cn}"), csr), key


def decide(services, request):
    return services.scep.enrollment.decide(request, "127.0.0.1", {})


def test_first_enrollment_then_resend_then_renewal(services):
    request, key = pkcs_req("decider-device")
    issued = decide(services, request)
    assert issued.reply.status is PkiStatus.SUCCESS, issued.refusal
    cert = issued.reply.certificates[0]
    assert decide(services, request).reply.certificates[0] == cert  # a resend: the stored answer
    renewal, _ = pkcs_req("decider-device", challenge=None, signer=cert, renewal=True)
    renewed = decide(services, renewal)
    assert renewed.reply.status is PkiStatus.SUCCESS, renewed.refusal
    assert renewed.reply.certificates[0].serial_number != cert.serial_number


def test_a_refusal_rolls_the_unit_of_work_back(services):
    """A one-time password spent by a request that is then refused (a key too weak for its
    template) is not spent: the same password works for the corrected request."""
    password, _ = new_one_time_password(services.store, dt.timedelta(minutes=5))
    weak, _ = pkcs_req("rollback", key=rsa.generate_private_key(65537, 1024), challenge=password)
    refused = decide(services, weak)
    assert refused.refusal.code is ErrorCode.KEY_TOO_WEAK
    good, _ = pkcs_req("rollback", challenge=password, transaction_id="T-rollback-2")
    assert decide(services, good).reply.status is PkiStatus.SUCCESS


def test_a_widening_renewal_is_refused_by_name(services):
    request, _ = pkcs_req("narrow-decider")
    cert = decide(services, request).reply.certificates[0]
    wider, _ = pkcs_req("narrow-decider", challenge=None, signer=cert, renewal=True, sans=[parse_san("dns:admin.example")])
    assert decide(services, wider).refusal.code is ErrorCode.RENEWAL_WIDENS_IDENTITY


def test_an_expired_certificate_is_never_resent(services, clock):
    request, _ = pkcs_req("expires-decider")
    cert = decide(services, request).reply.certificates[0]
    clock.advance(cert.not_valid_after_utc - clock.now() + dt.timedelta(days=1))
    try:
        assert decide(services, request).refusal.code is ErrorCode.ISSUED_CERTIFICATE_EXPIRED
        renewal, _ = pkcs_req("expires-decider", challenge=None, signer=cert, renewal=True)
        assert decide(services, renewal).refusal.code is ErrorCode.SIGNER_CERTIFICATE_EXPIRED
    finally:
        clock.set(dt.datetime.now(dt.timezone.utc))


def test_poll_and_retrieval_deciders(services):
    stranger = new_key()
    signer = self_signed(stranger, name("stranger"))
    ca = services.scep.authorities.ca.certificate
    unknown = CertPoll(exchange(MessageType.CERT_POLL, signer, "NO-SUCH"), ca.subject.public_bytes(), name("x").public_bytes())
    assert services.scep.retrieval.poll(unknown).refusal.code is ErrorCode.TRANSACTION_UNKNOWN
    get = GetCert(exchange(MessageType.GET_CERT, signer, "GET-1"), ca.subject.public_bytes(), 1)
    assert services.scep.retrieval.retrieve(get).refusal.code is ErrorCode.REQUESTER_NOT_AUTHORIZED


def test_pending_then_approved_by_the_administration(services):
    encrypt_only = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    request, _ = pkcs_req("approve-decider", key_usage=encrypt_only)
    assert decide(services, request).reply.status is PkiStatus.PENDING
    poll = CertPoll(request.exchange, b"", b"")
    assert services.scep.retrieval.poll(poll).reply.status is PkiStatus.PENDING
    approved = services.admin.approve(request.exchange.transaction_id)
    assert not isinstance(approved, Refusal)
    assert services.scep.retrieval.poll(poll).reply.certificates[0] == approved
    again = services.admin.approve(request.exchange.transaction_id)
    assert isinstance(again, Refusal) and again.code is ErrorCode.REQUEST_NOT_PENDING


def test_administration_refusals_are_codes(services):
    assert services.admin.approve("NO-SUCH").code is ErrorCode.TRANSACTION_UNKNOWN
    assert services.admin.deny("NO-SUCH", "no").code is ErrorCode.TRANSACTION_UNKNOWN
    assert services.admin.revoke("abc", "keyCompromise").code is ErrorCode.CERTIFICATE_UNKNOWN
    request, _ = pkcs_req("revoke-decider")
    serial = format(decide(services, request).reply.certificates[0].serial_number, "x")
    assert services.admin.revoke(serial, "nonsense").code is ErrorCode.REVOCATION_REASON_UNKNOWN
    revoked = services.admin.revoke(serial, "keyCompromise")
    assert [r.serial for r in revoked] == [serial]
    assert services.admin.revoke(serial, "keyCompromise").code is ErrorCode.CERTIFICATE_ALREADY_REVOKED
    assert decide(services, request).refusal.code is ErrorCode.ISSUED_CERTIFICATE_REVOKED


def test_a_message_too_broken_to_answer_is_an_http_400(services):
    result = services.scep.pki_operation(b"\x30\x03\x02\x01\x00", "127.0.0.1")
    assert result.http_status == 400 and result.refusal.code is ErrorCode.MESSAGE_UNDECODABLE


def _pki_message(material, cn: str, challenge: str) -> bytes:
    from scepd.protocol import enveloped
    from scepd.protocol.message import build_pki_message

    key = new_key()
    csr = build_csr(key, name(cn), challenge=challenge)
    return build_pki_message(
        message_type=MessageType.PKCS_REQ, transaction_id=f"T-{cn}", signer_certificate=self_signed(key, name(cn)),
        signer_key=key, digest_algorithm="sha256",
        envelope=enveloped.build_enveloped(csr.public_bytes(Encoding.DER), material.ra.certificate,
                                           ContentCipher.AES_128_CBC),
    )


@pytest.mark.parametrize("webhooks", [(), ("http://127.0.0.1:9/never-delivered",)])
def test_notifications_are_queued_for_targets_and_only_then(tmp_path, webhooks):
    """The outbox holds what is owed to someone: with no webhook neither a success nor a
    refusal writes a row (a refused request then costs no write at all), with one both do."""
    from scepd.registry.instance import load_key_material

    create_instance(tmp_path, key_spec="rsa:2048", static_challenge=CHALLENGE)
    update_config_file(tmp_path / "scepd.toml", {"notifications": {"webhooks": list(webhooks)}})
    instance = Instance.open(tmp_path)
    material = load_key_material(instance)
    store = instance.open_store()
    try:
        service = build_services(instance, store, material=material).scep
        issued = service.pki_operation(_pki_message(material, "told", CHALLENGE), "127.0.0.1")
        refused = service.pki_operation(_pki_message(material, "refused", "wrong challenge"), "127.0.0.1")
        assert (issued.status, refused.status) == ("SUCCESS", "FAILURE")
        kinds = [n["kind"].value for n in store.notifications()]
        assert kinds == (["success", "failure"] if webhooks else [])
    finally:
        store.dispose()


def test_the_ca_certificate_answers_without_http(services):
    """GetCACaps, GetCACert and GetNextCACert as the decider builds them for a CA with an RA,
    for a CA that is its own RA, and during a rollover."""
    from cryptography.hazmat.primitives.serialization import pkcs7

    from scepd.protocol.caps import parse_caps
    from scepd.service.ca_certs import CaCertificates
    from scepd.service.outcome import CA_CERT, CA_RA_CERT

    from asn1crypto import cms

    authorities = services.scep.authorities
    ca, ra = authorities.ca.pair.certificate, authorities.ra.certificate
    with_ra = CaCertificates(offered=[ra, ca], ca=ca, ra=authorities.ra, overlapping=False, next_certificates=[])
    assert {"POSTPKIOPERATION", "SHA-256", "AES", "RENEWAL"} <= parse_caps(with_ra.ca_caps)  # upper-cased
    assert "GETNEXTCACERT" not in parse_caps(with_ra.ca_caps) and with_ra.next_ca_certs is None
    kind, body = with_ra.ca_certs
    assert kind == CA_RA_CERT and set(pkcs7.load_der_pkcs7_certificates(body)) == {ra, ca}

    own_ra = CaCertificates(offered=[ca], ca=ca, ra=authorities.ca.pair, overlapping=False,
                            next_certificates=[])
    assert own_ra.ca_certs == (CA_CERT, ca.public_bytes(Encoding.DER))  # one CA, no RA: its DER alone

    rolling = CaCertificates(offered=[ra, ca], ca=ca, ra=authorities.ra, overlapping=False, next_certificates=[ra, ca])
    assert "GETNEXTCACERT" in parse_caps(rolling.ca_caps)
    # A SignedData by the current RA around certs-only of the next certificates.
    signed_data = cms.ContentInfo.load(rolling.next_ca_certs)["content"]
    signer = signed_data["signer_infos"][0]["sid"].chosen
    assert signer["serial_number"].native == ra.serial_number
    inner = signed_data["encap_content_info"]["content"].native
    assert set(pkcs7.load_der_pkcs7_certificates(inner)) == {ra, ca}
