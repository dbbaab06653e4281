"""Key lifecycle of an instance: CA rollover, activating the next CA, renewing the RA, and
resetting the template mapping. Each writes new files next to the old ones (never over them)
and then updates scepd.toml atomically; running servers pick the change up by themselves.

Rollover makes a *new self-signed root* with the same subject and a new key (no
cross-certificate): devices learn it through GetNextCACert or GetCACert during the overlap,
and certificates issued by the old CA stay valid, renewable and covered by its CRL.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scepd.ca.authority import CertificateAuthority, create_root_ca
from scepd.ca.keys import KeyPair, generate_key, save_certificate, save_key
from scepd.ca.pkcs11 import Pkcs11Uri, is_pkcs11_uri
from scepd.ca.token_keys import taken_labels
from scepd.ca.templates import DEFAULT_TEMPLATE
from scepd.registry.config import CONFIG_FILE, KeyFiles, update_config_file
from scepd.registry.instance import Instance, InstanceError, KeyMaterial


def _stamp(ca: CertificateAuthority) -> str:
    """Names new key files by the time of the CA that issues them."""
    return ca.clock.now().strftime("%Y%m%dT%H%M%S")


def _key_spec_like(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa:{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ec:p256", "secp384r1": "ec:p384", "secp521r1": "ec:p521"}[key.curve.name]
    raise ValueError(f"unsupported CA key {type(key).__name__}")


def new_key(instance: Instance, spec: str, beside: str, stem: str) -> tuple[object, str, str]:
    """A new key, the configuration entry that names it, and the stem its certificate file
    takes: where the key it replaces lives. Beside a key in a PKCS#11 token (`beside` is its
    URI) it is made in that token as an object, never on disk; otherwise it is written to a
    .key file (0600, encrypted with the instance's passphrase). The stem is `stem`, or
    `stem-2`, ... when that name is taken (an RA renewed and a CA rolled over in one second)."""
    in_token = is_pkcs11_uri(beside)
    free = next(candidate for candidate in (stem, *(f"{stem}-{n}" for n in range(2, 100)))
                if not (instance.path(f"{candidate}.pem").exists() or instance.path(f"{candidate}.key").exists()
                        or (in_token and taken_labels(beside, [candidate]))))
    if in_token:
        uri = str(Pkcs11Uri.parse(beside).with_object(free))
        return generate_key(spec, uri), uri, free
    key = generate_key(spec)
    save_key(key, instance.path(f"{free}.key"), instance.passphrase)
    return key, f"{free}.key", free


def _certificate_file(instance: Instance, stem: str, certificate) -> str:
    save_certificate(certificate, instance.path(f"{stem}.pem"))
    return f"{stem}.pem"


def _ra_subject(ca: CertificateAuthority, current_ra: KeyPair):
    return current_ra.certificate.subject if current_ra.certificate != ca.certificate else ca.certificate.subject


def rollover(instance: Instance, material: KeyMaterial, key_spec: str | None = None) -> Path:
    """Create the next CA (and an RA under it). GetCACaps then offers GetNextCACert."""
    if material.next_ca is not None:
        raise InstanceError("[ca] next_certificate", "a next CA exists already", "scepd ca activate-next")
    stamp = _stamp(material.ca)
    key, ca_key, stem = new_key(instance, key_spec or _key_spec_like(material.ca.pair.key), instance.config.ca.key,
                                f"ca-{stamp}")
    certificate = create_root_ca(material.ca.certificate.subject, key, clock=material.ca.clock)
    ca_cert = _certificate_file(instance, stem, certificate)
    changes: dict = {"ca": {"next_certificate": ca_cert, "next_key": ca_key}}
    if instance.config.ra.certificate:
        # The next RA's certificate says where the next CA's CRL and certificate are, as every
        # certificate that CA issues will.
        base = instance.config.server.publication_url
        next_ca = CertificateAuthority(KeyPair(certificate, key), f"{base}/crl", material.ca.clock, public_url=base)
        ra_key, ra_key_name, ra_stem = new_key(instance, _key_spec_like(material.ra.key), instance.config.ra.key,
                                               f"ra-{stamp}")
        ra_certificate = next_ca.issue_ra_certificate(_ra_subject(material.ca, material.ra), ra_key)
        ra_cert = _certificate_file(instance, ra_stem, ra_certificate)
        changes["ra"] = {"next_certificate": ra_cert, "next_key": ra_key_name}
    update_config_file(instance.path(CONFIG_FILE), changes)
    return instance.path(ca_cert)


def _supersede(files: KeyFiles, certificate: str, key: str) -> dict:
    """The [ca] or [ra] values that make `certificate`/`key` the active pair and keep the
    current one as the newest previous pair (still trusted, still decrypting)."""
    return {
        "certificate": certificate,
        "key": key,
        "previous_certificates": (files.certificate, *files.previous_certificates),
        "previous_keys": (files.key, *files.previous_keys),
    }


def activate_next(instance: Instance) -> None:
    """Issue from the next CA from now on; the old one stays trusted (overlap)."""
    ca, ra = instance.config.ca, instance.config.ra
    if not ca.next_certificate:
        raise InstanceError("[ca] next_certificate", "there is no next CA to activate", "scepd ca rollover")
    changes = {"ca": {**_supersede(ca, ca.next_certificate, ca.next_key), "next_certificate": "", "next_key": ""}}
    if ra.next_certificate:
        changes["ra"] = {**_supersede(ra, ra.next_certificate, ra.next_key), "next_certificate": "", "next_key": ""}
    update_config_file(instance.path(CONFIG_FILE), changes)


def renew_ra(instance: Instance, material: KeyMaterial, validity_days: int = 730) -> Path:
    """A new RA key and certificate under the active CA. The old RA stays a decryption key,
    so requests from clients that cached it still open."""
    ra = instance.config.ra
    if not ra.certificate:
        raise InstanceError("[ra] certificate", "this instance has no separate RA (the CA acts as RA)", "nothing to renew")
    key, key_name, stem = new_key(instance, _key_spec_like(material.ra.key), ra.key, f"ra-{_stamp(material.ca)}")
    certificate = material.ca.issue_ra_certificate(material.ra.certificate.subject, key, validity_days)
    cert_name = _certificate_file(instance, stem, certificate)
    update_config_file(instance.path(CONFIG_FILE), {"ra": _supersede(ra, cert_name, key_name)})
    return instance.path(cert_name)


def reset_template_mapping(instance: Instance) -> dict[str, str]:
    """What NDES admins do by hand in the registry: all three purposes to the default."""
    mapping = {key: DEFAULT_TEMPLATE for key in ("SignatureTemplate", "EncryptionTemplate", "GeneralPurposeTemplate")}
    update_config_file(instance.path(CONFIG_FILE), {"template_mapping": mapping})
    return mapping
