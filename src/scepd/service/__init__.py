"""The service: one small decider per SCEP request type and per administrator action.

Each takes typed input (a request opened by `scepd.protocol.requests.open_request`, or an
administrator's arguments) and returns a value: an `Outcome` for SCEP, a result or a `Refusal`
for the others. None of them knows HTTP; `scepd.wiring` builds them from an instance, and
`server/` and the CLI only call them.
- pki: PKIOperation from bytes to CertRep, dispatching to the deciders below
- ca_certs: GetCACaps, GetCACert, GetNextCACert (built once)
- enroll: PKCSReq and RenewalReq (first enrollment, renewal, resends)
- renew: what a renewal may ask for without the registration point
- retrieve: CertPoll, GetCert, GetCRL
- issuance: signing and recording a certificate in a unit of work
- admin: approve, deny, revoke, one-time passwords; each recorded in the audit trail with its Actor
- rp_api: the registration point's HTTP API logic
- accounts: the console's administrators, sign-in with lock-out, sessions
- activity: what the records and the request log say, for the console
May import: scepd.protocol, scepd.ca, scepd.store, scepd.challenge, scepd.clock, scepd.registry
(rp_api: durations in the configuration's syntax and bounds, API token digests, challenges issued
with the instance's registration point keys).
"""
