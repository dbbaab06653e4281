"""An instance whose keys live in a PKCS#11 token: which objects `scepd init --pkcs11` makes,
and the configuration that names them. The faults are the token's own (Pkcs11UriError,
TokenError); registry/instance.py turns them into InstanceErrors naming the entry."""

from __future__ import annotations

from dataclasses import replace

from scepd.ca.pkcs11 import Pkcs11Uri, TokenError
from scepd.ca.token_keys import taken_labels
from scepd.registry.config import Config

# The token objects `scepd init --pkcs11` makes: [ca] key, [ra] key, the registration point's two.
TOKEN_OBJECTS = ("ca", "ra", "rp-encryption", "rp-signing")


def token_config(config: Config, uri: str) -> Config:
    """`config` with its four keys named as objects of the token `uri` names (none of which
    may exist yet: an instance never takes over another's keys)."""
    base = Pkcs11Uri.parse(uri)
    taken = taken_labels(str(base), list(TOKEN_OBJECTS))
    if taken:
        raise TokenError(f"the token holds objects labelled {', '.join(taken)} already",
                         "use another token (or remove those objects yourself, if no instance uses them)")
    rp = config.registration_point
    return replace(config, ca=replace(config.ca, key=str(base.with_object("ca"))),
                   ra=replace(config.ra, key=str(base.with_object("ra"))),
                   registration_point=replace(rp, encryption_key=str(base.with_object("rp-encryption")),
                                              signing_key=str(base.with_object("rp-signing"))))
