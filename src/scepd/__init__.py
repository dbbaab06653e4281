"""scepd: a self-hosted SCEP server, CA, registration point and client.

Packages, top to bottom: server/ (HTTP) and cli/ call the services that wiring.py builds from
an instance; service/ holds one decider per request type and administrator action, and calls
challenge/ (the registration point), ca/ (keys, templates, issuance, CRLs), store/
(persistence) and protocol/ (RFC 8894 and CMS, sans-I/O, and the error vocabulary).
registry/ owns the instance directory and its configuration. Dependencies point downward
only; protocol/ imports nothing of ours. docs/architecture.md follows one enrollment through.
"""

__version__ = "0.1.0"
