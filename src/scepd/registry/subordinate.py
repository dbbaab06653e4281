"""A CA under someone else's root, or one brought along: the CSR, its signed certificate,
an imported CA or RA, and the rollover of a subordinate (docs/pki.md).

`create_subordinate` writes the CA key and `ca.csr` and marks the instance as awaiting its
certificate ([ca] request); `install_ca` checks what the root signed (our key, a CA, valid,
a chain up to a self-signed root) and completes the instance. `import_ca` makes an instance
around an existing issuing CA; `request_next_ca` is `scepd ca rollover` for a subordinate
(the next CA's CSR), `install_ca(next=True)` takes its certificate; `import_ra` brings an RA
certificate issued by our CA. Every refusal is an InstanceError whose entry names the rule.

Certificates and the chain file are written whole or not at all (a running server may read
them at any moment). What a failed `install_ca` or `import_ca` wrote is removed again, so the
same command can simply be run again (`incomplete` names the failure); an RA key left by one
that was killed is set aside.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from scepd.ca.authority import CertificateAuthority, create_ca_request
from scepd.ca.chain import (
    ChainError,
    check_issuing_ca,
    describe,
    load_pem_certificates,
    same_key,
)
from scepd.ca.keys import KeyPair, generate_key, load_key, save_key
from scepd.ca.pkcs11 import Pkcs11UriError, TokenError, is_pkcs11_uri
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.registry.config import CONFIG_FILE, update_config_file
from scepd.registry.instance import (
    Instance,
    InstanceError,
    KeyMaterial,
    complete_instance,
    new_config,
    parse_subject,
    write_config,
)
from scepd.registry.keyops import _key_spec_like, new_key
from scepd.store import StoreUnavailable

CSR_FILE = "ca.csr"
NEXT_CSR_FILE = "ca-next.csr"
CHAIN_FILE = "ca-chain.pem"


def _refused(exc: ChainError) -> InstanceError:
    return InstanceError(exc.name, exc.reason, exc.fix)


def _read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InstanceError(what, f"{path} cannot be read ({exc.strerror})", "give the path of a PEM file") from None
    try:
        return load_pem_certificates(data, str(path))
    except ChainError as exc:
        raise _refused(exc) from None


def _read_key(path: Path, passphrase: bytes | None, what: str):
    if is_pkcs11_uri(str(path)):
        try:
            return load_key(str(path))
        except TokenError as exc:
            raise InstanceError(what, exc.reason, exc.fix) from None
        except Pkcs11UriError as exc:
            raise InstanceError(what, str(exc), "correct the PKCS#11 URI (docs/pki.md, Keys in an HSM)") from None
    try:
        return load_key(Path(path), passphrase)
    except OSError as exc:
        raise InstanceError(what, f"{path} cannot be read ({exc.strerror})", "give the path of a PEM private key") from None
    except TypeError:
        raise InstanceError(what, f"{path} is encrypted and no passphrase was given", "export SCEPD_KEY_PASSPHRASE=<passphrase>") from None
    except ValueError as exc:
        raise InstanceError(what, f"{path} is not a PEM private key, or the passphrase is wrong ({exc})",
                            "give the key as PEM (PKCS#8 or traditional), with SCEPD_KEY_PASSPHRASE when encrypted") from None


def _stamp(clock: Clock) -> str:
    return clock.now().strftime("%Y%m%dT%H%M%S")


def _write_whole(path: Path, data: bytes) -> None:
    """`path` replaced at once: a watcher reads the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _save_certificate(cert: x509.Certificate, path: Path) -> None:
    _write_whole(path, cert.public_bytes(Encoding.PEM))


def _entries(directory: Path) -> set[Path]:
    return set(directory.rglob("*")) if directory.is_dir() else set()


@contextlib.contextmanager
def _all_or_nothing(directory: Path, command: str):
    """The files `command` creates in `directory` are removed again when it fails: none of
    them was used (the instance is not servable before it succeeds), and a second run would
    meet them (a key file is never overwritten). A fault of the disk or the database is
    `incomplete`, naming it."""
    before = _entries(directory)
    try:
        yield
    except BaseException as exc:
        # Deepest first: a directory it made goes once its files have.
        for leftover in sorted(_entries(directory) - before, key=lambda p: len(p.parts), reverse=True):
            if leftover.is_dir():
                with contextlib.suppress(OSError):
                    leftover.rmdir()
            else:
                leftover.unlink(missing_ok=True)
        if not isinstance(exc, (OSError, StoreUnavailable)):
            raise
        raise InstanceError("incomplete", f"{command} failed and wrote nothing ({type(exc).__name__}: {exc})",
                            f"mend that, then run {command} again") from None


def _set_aside_interrupted(instance: Instance, clock: Clock) -> None:
    """RA files of an install that was killed before it completed (the instance was never
    servable, so nothing used them): renamed, so that the RA is made again."""
    ra = instance.config.ra
    for name in (ra.key, ra.certificate):
        path = instance.path(name)
        if not is_pkcs11_uri(name) and path.exists():
            path.rename(path.with_name(f"{path.name}.interrupted-{_stamp(clock)}"))


def _write_chain(instance: Instance, certificates: list[x509.Certificate]) -> str:
    """Add `certificates` to the chain file (the pool above our CAs); its name, or "" when
    there is nothing above (a CA that is its own root)."""
    name = instance.config.ca.chain or CHAIN_FILE
    path = instance.path(name)
    existing = load_pem_certificates(path.read_bytes(), str(path)) if path.exists() else []
    pool = list(dict.fromkeys(existing + certificates))
    if not pool:
        return instance.config.ca.chain
    _write_whole(path, b"".join(c.public_bytes(Encoding.PEM) for c in pool))
    return name


def create_subordinate(directory: Path, *, ca_subject: str, key_spec: str, passphrase: bytes | None,
                       static_challenge: str | None) -> tuple[Instance, Path]:
    """The CA key, `ca.csr` for the root to sign, and scepd.toml with [ca] request set: the
    instance is not servable until `scepd ca install`."""
    directory = Path(directory)
    config = new_config(directory, static_challenge)
    subject = parse_subject(ca_subject)
    key = generate_key(key_spec)
    directory.mkdir(parents=True, exist_ok=True)
    instance = Instance(directory, replace(config, ca=replace(config.ca, request=CSR_FILE)))
    save_key(key, instance.path(config.ca.key), passphrase)
    instance.path(CSR_FILE).write_bytes(create_ca_request(subject, key).public_bytes(Encoding.PEM))
    write_config(instance)
    return instance, instance.path(CSR_FILE)


def _signed(instance: Instance, signed_path: Path, chain_path: Path | None, csr_name: str, key_name: str,
            clock: Clock) -> tuple[KeyPair, list[x509.Certificate]]:
    """The certificate the root signed for the CSR `csr_name`, checked, with its key and the
    path above it."""
    certificates = _read_certificates(signed_path, "SIGNED.pem")
    pool = certificates[1:] + (_read_certificates(chain_path, "--chain") if chain_path else [])
    pool += list(_existing_chain(instance))
    csr = x509.load_pem_x509_csr(instance.path(csr_name).read_bytes())
    key = _read_key(instance.path(key_name), instance.passphrase, f"[ca] {key_name}")
    if not same_key(csr, key.public_key()):
        raise InstanceError("key_mismatch", f"{csr_name} was not made for {key_name}", "restore both as scepd wrote them")
    try:
        path = check_issuing_ca(certificates[0], key.public_key(), pool, clock.now())
    except ChainError as exc:
        raise _refused(exc) from None
    return KeyPair(certificates[0], key), path


def _existing_chain(instance: Instance) -> tuple[x509.Certificate, ...]:
    name = instance.config.ca.chain
    if not name or not instance.path(name).exists():
        return ()
    return tuple(load_pem_certificates(instance.path(name).read_bytes(), name))


def install_ca(instance: Instance, signed_path: Path, chain_path: Path | None, *, next: bool = False,
               clock: Clock = SYSTEM_CLOCK) -> KeyPair:
    """Take the certificate the root signed for [ca] request (or, with `next`, for
    next_request), check it and its chain, and complete the instance (or offer the next CA)."""
    ca = instance.config.ca
    if next:
        return _install_next(instance, signed_path, chain_path, clock)
    if not ca.request:
        raise InstanceError("[ca] request", "no CSR of this instance awaits a certificate",
                            "scepd init --subordinate for a new instance; scepd ca rollover, then ca install --next")
    pair, path = _signed(instance, signed_path, chain_path, ca.request, ca.key, clock)
    _set_aside_interrupted(instance, clock)
    with _all_or_nothing(instance.directory, "scepd ca install"):
        _save_certificate(pair.certificate, instance.path(ca.certificate))
        chain = _write_chain(instance, path)
        complete_instance(instance, pair, instance.passphrase)
        # Last, so that the instance turns servable only once everything is there.
        update_config_file(instance.path(CONFIG_FILE), {"ca": {"request": "", "chain": chain}})
    return pair


def _install_next(instance: Instance, signed_path: Path, chain_path: Path | None, clock: Clock) -> KeyPair:
    ca, ra = instance.config.ca, instance.config.ra
    if not ca.next_request:
        raise InstanceError("[ca] next_request", "no next CA awaits a certificate", "scepd ca rollover")
    pair, path = _signed(instance, signed_path, chain_path, ca.next_request, ca.next_key, clock)
    stamp = _stamp(clock)
    cert_name = f"ca-{stamp}.pem"
    _save_certificate(pair.certificate, instance.path(cert_name))
    changes: dict = {"ca": {"next_certificate": cert_name, "next_request": "", "chain": _write_chain(instance, path)}}
    if ra.certificate:
        base = instance.config.server.publication_url
        next_ca = CertificateAuthority(pair, f"{base}/crl", clock, public_url=base)
        current_ra = x509.load_pem_x509_certificate(instance.path(ra.certificate).read_bytes())
        ra_key, ra_key_name, ra_stem = new_key(instance, f"rsa:{current_ra.public_key().key_size}", ra.key, f"ra-{stamp}")
        ra_cert = next_ca.issue_ra_certificate(current_ra.subject, ra_key)
        _save_certificate(ra_cert, instance.path(f"{ra_stem}.pem"))
        changes["ra"] = {"next_certificate": f"{ra_stem}.pem", "next_key": ra_key_name}
    update_config_file(instance.path(CONFIG_FILE), changes)
    return pair


def request_next_ca(instance: Instance, material: KeyMaterial, key_spec: str | None = None) -> Path:
    """`scepd ca rollover` for a CA under someone else's root: the next CA's key and CSR
    (same subject); its certificate comes with `scepd ca install --next`."""
    ca = instance.config.ca
    if material.next_ca is not None or ca.next_request:
        raise InstanceError("[ca] next_certificate", "a next CA exists already (or awaits its certificate)",
                            "scepd ca activate-next, or scepd ca install --next SIGNED.pem")
    key, key_name, _stem = new_key(instance, key_spec or _key_spec_like(material.ca.pair.key), ca.key,
                                   f"ca-{_stamp(material.ca.clock)}")
    csr = create_ca_request(material.ca.certificate.subject, key)
    instance.path(NEXT_CSR_FILE).write_bytes(csr.public_bytes(Encoding.PEM))
    update_config_file(instance.path(CONFIG_FILE), {"ca": {"next_key": key_name, "next_request": NEXT_CSR_FILE}})
    return instance.path(NEXT_CSR_FILE)


def import_ca(directory: Path, cert_path: Path, key_path: Path, chain_path: Path | None, *,
              passphrase: bytes | None, static_challenge: str | None, key_passphrase: bytes | None = None,
              clock: Clock = SYSTEM_CLOCK) -> Instance:
    """A new instance around an existing issuing CA (its certificate, its key, opened with
    `key_passphrase` when encrypted, the chain above it), held to the same rules as
    `install_ca`; the key is written again, 0600 (encrypted with `passphrase` when given)."""
    directory = Path(directory)
    config = new_config(directory, static_challenge)
    certificates = _read_certificates(cert_path, "CERT")
    pool = certificates[1:] + (_read_certificates(chain_path, "--chain") if chain_path else [])
    key = _read_key(key_path, key_passphrase, "KEY")
    try:
        path = check_issuing_ca(certificates[0], key.public_key(), pool, clock.now(), key_source="the given")
    except ChainError as exc:
        raise _refused(exc) from None
    directory.mkdir(parents=True, exist_ok=True)
    in_token = is_pkcs11_uri(str(key_path))
    if in_token:
        # A key already in a token stays there: the configuration names it.
        config = replace(config, ca=replace(config.ca, key=str(key_path)))
    instance = Instance(directory, config)
    with _all_or_nothing(directory, "scepd init --import-ca"):
        if not in_token:
            save_key(key, instance.path(config.ca.key), passphrase)
        _save_certificate(certificates[0], instance.path(config.ca.certificate))
        instance = Instance(directory, replace(config, ca=replace(config.ca, chain=_write_chain(instance, path))))
        write_config(instance)
        complete_instance(instance, KeyPair(certificates[0], key), passphrase)
    return instance


def import_ra(instance: Instance, material: KeyMaterial, cert_path: Path, key_path: Path) -> Path:
    """An RA certificate from elsewhere, issued by our active CA for an RSA key (clients
    encrypt to it), with its key; the current RA stays a decryption key."""
    certificate = _read_certificates(cert_path, "CERT")[0]
    key = _read_key(key_path, instance.passphrase, "KEY")
    now = material.ca.clock.now()
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InstanceError("not_rsa", f"{key_path} is not an RSA key; SCEP clients encrypt to the RA with RSA key transport",
                            "issue the RA certificate for an RSA key (2048 bits or more)")
    if not same_key(certificate, key.public_key()):
        raise InstanceError("key_mismatch", f"{key_path} does not belong to {cert_path}", "give the key of that certificate")
    if not material.ca.issued(certificate):
        raise InstanceError("not_our_issuer", f"{describe(certificate)} is not issued by our CA {describe(material.ca.certificate)}",
                            "have the issuing CA of this instance sign the RA certificate")
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        raise InstanceError("expired", f"{describe(certificate)} is not valid now", "issue a current RA certificate")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not (usage.digital_signature and usage.key_encipherment):
            raise InstanceError("ra_key_usage", "the RA certificate needs keyUsage digitalSignature and keyEncipherment",
                                "issue it with keyUsage = critical, digitalSignature, keyEncipherment")
    except x509.ExtensionNotFound:
        pass  # every usage allowed
    stamp = _stamp(material.ca.clock)
    cert_name, key_name = f"ra-{stamp}.pem", f"ra-{stamp}.key"
    if is_pkcs11_uri(str(key_path)):
        key_name = str(key_path)  # a key in a token stays there: the configuration names it
    else:
        save_key(key, instance.path(key_name), instance.passphrase)
    _save_certificate(certificate, instance.path(cert_name))
    ra = instance.config.ra
    changes: dict = {"certificate": cert_name, "key": key_name}
    if ra.certificate:
        changes |= {"previous_certificates": (ra.certificate, *ra.previous_certificates),
                    "previous_keys": (ra.key, *ra.previous_keys)}
    update_config_file(instance.path(CONFIG_FILE), {"ra": changes})
    return instance.path(cert_name)
