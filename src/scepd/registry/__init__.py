"""The instance and its typed configuration: scepd.toml, key material, start-up checks.

Owns reading and validating `scepd.toml` (with environment overrides), creating and opening
an instance directory, loading the CA and RA keys once, and the checks run before serving:
what can be re-created safely is repaired and logged, what cannot stops the server with a
message naming the missing piece and the command that fixes it.
May import: scepd.ca, scepd.store, scepd.errors, scepd.protocol.
"""
