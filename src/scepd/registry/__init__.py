"""The instance and its typed configuration: scepd.toml, key material, start-up checks.

Owns reading and validating `scepd.toml` (with environment overrides), creating and opening
an instance directory, loading the CA and RA keys once, and the checks run before serving:
what can be re-created safely is repaired and logged, what cannot stops the server with a
message naming the missing piece and the command that fixes it. It also keeps the
registration point's entries (its pairs, trusted signers, API tokens) and issues local MDM
challenges with them.
- config: scepd.toml (server_config: its [server]; durations: '60m' and ConfigError);
  instance: the directory, its keys; keyops: rollover, RA renewal;
  rp: the registration point's entries; checks, doctor: start-up checks and `scepd doctor`
- subordinate: a CA under another root (its CSR, `ca install`), an imported CA or RA
- tls: the HTTPS server certificate ([server] tls = "self" issues and renews it)
- tokens: an instance whose keys are objects of a PKCS#11 token (`scepd init --pkcs11`)
May import: scepd.ca, scepd.store, scepd.protocol (its error vocabulary included),
scepd.challenge (the MDM challenge it issues), scepd.clock.
"""
