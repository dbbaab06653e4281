"""The certificate authority: key handles, issuance policy, certificate signing, serials.

Owns the CA and RA key pairs (files today; the `KeyPair` seam is where PKCS#11 would go),
creating a root CA and the RA certificate, checking a request against the issuance policy
and signing certificates. It does not store anything: the caller records what it issues.
May import: scepd.protocol, scepd.errors, cryptography.
"""
