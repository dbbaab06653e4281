"""The certificate authority: key handles, issuance policy, certificate signing, serials.

Owns the CA and RA key pairs (files today; the `KeyPair` seam is where PKCS#11 would go),
creating a root CA and the RA certificate, certificate templates (the issuance policy) and
signing certificates and CRLs. It does not record the certificates it issues (the caller
does, with the transaction they answer); CRLs are numbered and kept in the store, and
revoking is a store update, so `crl` alone uses scepd.store.
- keys: key pairs on disk; authority: the root CA and issuing; templates: policy; crl: CRLs
May import: scepd.protocol (its error vocabulary and X.509 names included), scepd.store (crl
only), scepd.clock, cryptography.
"""
