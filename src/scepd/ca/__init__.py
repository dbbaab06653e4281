"""The certificate authority: key handles, issuance policy, certificate signing, serials.

Owns the CA and RA key pairs (files, or keys in a PKCS#11 token behind the same `KeyPair`),
creating a root CA and the RA certificate, certificate templates (the issuance policy) and
signing certificates, CRLs and OCSP responses. It does not record the certificates it issues
(the caller does, with the transaction they answer); CRLs are numbered and kept in the store,
revoking is a store update, and OCSP answers the status the store holds, so `crl` and `ocsp`
use scepd.store.
- keys: key pairs on disk; authority: the root CA, CA requests and issuing; templates: policy
- chain: the path from a CA to a self-signed root above it (a subordinate's, an import's)
- crl: CRLs; ocsp: the OCSP responder (RFC 6960); ocsp_signer: its delegated signers
- pkcs11: token URIs and sessions; token_keys: token-held keys; signing: builders signed by any key
May import: scepd.protocol (its error vocabulary and X.509 names included), scepd.store (crl
and ocsp only), scepd.clock, cryptography, asn1crypto (signing: a token's signature put in).
"""
