"""scepd: a self-hosted SCEP server, CA, registration point and client.

Packages, top to bottom: server/ (HTTP) and cli.py call enrollment.py (the SCEP service),
which calls challenge/ (the registration point), registry/ (instance and configuration),
ca/ (keys, policy, issuance), store/ (persistence) and protocol/ (RFC 8894 and CMS,
sans-I/O). Dependencies point downward only; protocol/ imports nothing of ours.
"""

__version__ = "0.1.0"
