"""The MDM challenge validator's phases as an administrator reads them in the log: decode,
decrypt, signature, time, compare, replay; each refusal names its phase, and nothing runs
after it."""

from __future__ import annotations

import datetime as dt
import logging

from conftest import name
from cryptography.hazmat.primitives.asymmetric import ec
from test_clock import _ca, _csr, clock, store  # noqa: F401  (fixtures)

from scepd.challenge.base import ChallengeRequest
from scepd.challenge.mdm import ExpectedRequest, MdmChallengeValidator, issue_challenge


def _phases(caplog, tid):
    return [(r.fields["phase"], r.fields["result"], r.fields.get("code"), r.fields.get("reason"), r.levelno)
            for r in caplog.records if r.getMessage() == "challenge phase" and r.fields["transaction_id"] == tid]


def test_each_phase_is_logged_and_a_refused_phase_ends_the_verification(store, clock, caplog):
    """The verification stops at the first phase that refuses, and the log says which phase,
    with the refusal's code and reason; an accepted challenge passes all six."""
    caplog.set_level(logging.INFO, logger="scepd.challenge")
    sk, ek = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _ca(clock)
    signing = ca.issue_service_certificate(name("signing"), sk.public_key(), {"digitalSignature"}, 30)
    encryption = ca.issue_service_certificate(name("encryption"), ek.public_key(), {"keyAgreement"}, 30)
    ch, claims = issue_challenge(signing_certificate=signing, signing_key=sk, encryption_certificate=encryption,
                                 expected=ExpectedRequest(subject="CN=clocked"), issuer="mdm", audience="rp",
                                 lifetime=dt.timedelta(minutes=30), clock=clock)
    v = MdmChallengeValidator((encryption, ek), (signing,), "rp", clock=clock)
    with store.unit_of_work() as uow:
        ok = v.verify(ChallengeRequest("T-ok", ch, _csr()), uow)
    assert ok.accepted and ok.claims == claims and ok.validator == "mdm"
    assert [p[:2] for p in _phases(caplog, "T-ok")] == [(n, "pass") for n in
                                                      ["decode", "decrypt", "signature", "time", "compare", "replay"]]
    with store.unit_of_work() as uow:
        again = v.verify(ChallengeRequest("T-again", ch, _csr()), uow)
    assert again.refusal.code.value == "ChallengeReplayed"
    last = _phases(caplog, "T-again")[-1]
    assert last == ("replay", "fail", "ChallengeReplayed", f"challenge {claims['jti']} has been used already", logging.WARNING)
    clock.advance(dt.timedelta(minutes=36))
    with store.unit_of_work() as uow:
        exp = v.verify(ChallengeRequest("T-exp", ch, _csr()), uow)
    got = _phases(caplog, "T-exp")
    assert [p[:2] for p in got] == [("decode", "pass"), ("decrypt", "pass"), ("signature", "pass"), ("time", "fail")]
    assert got[-1][2] == "ChallengeExpired" and got[-1][3] == exp.refusal.reason
    with store.unit_of_work() as uow:
        dec = v.verify(ChallengeRequest("T-dec", "a.b.c.d.e", _csr()), uow)
    assert [p[:3] for p in _phases(caplog, "T-dec")] == [("decode", "fail", "ChallengeDecodingError")]
    assert dec.refusal.reason.startswith("the challenge is not a compact JWE: ")
    nokey = MdmChallengeValidator(None, (signing,), "rp", clock=clock)
    with store.unit_of_work() as uow:
        nk = nokey.verify(ChallengeRequest("T-nk", ch, _csr()), uow)
    assert [p[:2] for p in _phases(caplog, "T-nk")] == [("decode", "pass"), ("decrypt", "fail")]
    assert nk.refusal.reason == "the registration point has no encryption key; run 'scepd doctor --fix' or restart 'scepd serve'"
