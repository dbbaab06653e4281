"""Private keys held by a PKCS#11 token, as cryptography key objects.

`TokenRSAPrivateKey` and `TokenECPrivateKey` subclass cryptography's ABCs, so the code that
asks `isinstance(key, rsa.RSAPrivateKey)` and calls `sign`, `decrypt` (the RA's envelope)
or `exchange` (ECDH, the registration point's challenges) works unchanged; the token does
the private-key operation. `private_bytes` and `private_numbers` refuse: the key is
non-extractable and never leaves the token. cryptography's X.509 builders cannot use these
keys: `ca.signing.sign_with` signs certificates, CRLs and OCSP responses with them.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from scepd.ca.pkcs11 import Pkcs11Uri, TokenError, binding, connection, is_gone
from scepd.protocol.errors import KeyUnavailable

# What a decryption may fail with for a ciphertext that does not decrypt (HSMs answer bad
# padding with CKR_FUNCTION_FAILED or CKR_DEVICE_ERROR as well as CKR_GENERAL_ERROR):
# re-trying it on a fresh session and answering 503 would tell a sender which of its
# ciphertexts decrypt, so these are a ValueError as any other decryption failure.
_DECRYPT_REFUSALS = ("DeviceError", "FunctionFailed")


def _gone_for_decrypt(exc: BaseException) -> bool:
    return is_gone(exc) and type(exc).__name__ not in _DECRYPT_REFUSALS


class KeyNotExtractable(TypeError):
    """Raised for any attempt to read a token-held private key out of the token."""


def _digest(data: bytes, algorithm) -> tuple[bytes, hashes.HashAlgorithm]:
    if isinstance(algorithm, Prehashed):
        return data, algorithm._algorithm
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize(), algorithm


def _digest_info(digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    from asn1crypto import algos

    return algos.DigestInfo({"digest_algorithm": {"algorithm": algorithm.name.replace("-", "")},
                             "digest": digest}).dump()


class TokenKey:
    """What both kinds share: the URI, the token's connection, the public key read once."""

    def __init__(self, uri: Pkcs11Uri, public_key) -> None:
        self.uri = uri
        self._connection = connection(uri)
        self._public = public_key

    def public_key(self):
        return self._public

    def _run(self, operation):
        return self._connection.run(self.uri, operation)

    def _sign_with_token(self, data: bytes, **kwargs) -> bytes:
        try:
            return self._run(lambda k: k.sign(data, **kwargs))
        except KeyUnavailable:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("pkcs11"):
                # A signature the token refuses is not the peer's fault and nothing to retry here.
                raise KeyUnavailable(f"the token refused to sign with {self.uri.object} ({type(exc).__name__})") from None
            raise

    def private_bytes(self, *args, **kwargs):
        raise KeyNotExtractable(f"the key {self.uri.display} is held by its PKCS#11 token and never leaves it")

    def private_numbers(self):
        raise KeyNotExtractable(f"the key {self.uri.display} is held by its PKCS#11 token and never leaves it")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uri.display}>"


class TokenRSAPrivateKey(TokenKey, rsa.RSAPrivateKey):
    @property
    def key_size(self) -> int:
        return self._public.key_size

    def sign(self, data: bytes, padding_: padding.AsymmetricPadding, algorithm) -> bytes:
        pkcs11 = binding()
        digest, hash_algorithm = _digest(data, algorithm)
        if isinstance(padding_, padding.PKCS1v15):
            return self._sign_with_token(_digest_info(digest, hash_algorithm), mechanism=pkcs11.Mechanism.RSA_PKCS)
        if isinstance(padding_, padding.PSS):
            salt = padding_._salt_length
            if salt in (padding.PSS.DIGEST_LENGTH, padding.PSS.AUTO):
                salt = hash_algorithm.digest_size
            elif salt is padding.PSS.MAX_LENGTH:
                salt = (self.key_size + 7) // 8 - hash_algorithm.digest_size - 2
            _, mgf = _hash_mechanisms(pkcs11, padding_._mgf._algorithm)
            hash_mech, _ = _hash_mechanisms(pkcs11, hash_algorithm)
            return self._sign_with_token(digest, mechanism=pkcs11.Mechanism.RSA_PKCS_PSS,
                                         mechanism_param=(hash_mech, mgf, salt))
        raise ValueError(f"padding {padding_.name} is not supported by token keys")

    def decrypt(self, ciphertext: bytes, padding_: padding.AsymmetricPadding) -> bytes:
        """Like cryptography's: ValueError when the ciphertext does not decrypt (the caller's
        implicit rejection relies on it); KeyUnavailable when the token is gone."""
        pkcs11 = binding()
        if isinstance(padding_, padding.PKCS1v15):
            kwargs = {"mechanism": pkcs11.Mechanism.RSA_PKCS}
        elif isinstance(padding_, padding.OAEP):
            if padding_._label:
                raise ValueError("OAEP labels are not supported by token keys")
            hash_mech, _ = _hash_mechanisms(pkcs11, padding_._algorithm)
            _, mgf = _hash_mechanisms(pkcs11, padding_._mgf._algorithm)
            kwargs = {"mechanism": pkcs11.Mechanism.RSA_PKCS_OAEP, "mechanism_param": (hash_mech, mgf, None)}
        else:
            raise ValueError(f"padding {padding_.name} is not supported by token keys")
        try:
            return self._connection.run(self.uri, lambda k: k.decrypt(ciphertext, **kwargs), gone=_gone_for_decrypt)
        except KeyUnavailable:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("pkcs11") and not _gone_for_decrypt(exc):
                raise ValueError("Decryption failed") from None
            raise


class TokenECPrivateKey(TokenKey, ec.EllipticCurvePrivateKey):
    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        pkcs11 = binding()
        digest, _ = _digest(data, signature_algorithm.algorithm)
        raw = self._sign_with_token(digest, mechanism=pkcs11.Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        """ECDH in the token: the shared secret as a session object readable once (the
        caller's KDF turns it into the key-encryption key)."""
        pkcs11 = binding()
        if peer_public_key.curve.name != self.curve.name:
            raise ValueError("the peer's key is on another curve")
        point = peer_public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        size = (self.curve.key_size + 7) // 8

        def derive(k):
            secret = k.derive_key(pkcs11.KeyType.GENERIC_SECRET, size * 8, mechanism=pkcs11.Mechanism.ECDH1_DERIVE,
                                  mechanism_param=(pkcs11.KDF.NULL, None, point),
                                  template={pkcs11.Attribute.SENSITIVE: False, pkcs11.Attribute.EXTRACTABLE: True})
            try:
                return secret[pkcs11.Attribute.VALUE]
            finally:
                secret.destroy()

        try:
            return self._run(derive)
        except KeyUnavailable:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("pkcs11") and not is_gone(exc):
                raise ValueError("ECDH failed in the token") from None
            raise


def _hash_mechanisms(pkcs11, algorithm: hashes.HashAlgorithm):
    """(the hash's CKM_, its CKG_MGF1_) for OAEP and PSS parameters."""
    name = algorithm.name.replace("-", "").upper()  # SHA256
    return getattr(pkcs11.Mechanism, "SHA_1" if name == "SHA1" else name), getattr(pkcs11.MGF, name)


def _public_key_of(session, uri: Pkcs11Uri, private):
    """The key's public half: from the token's public object, else (RSA) the private one's
    modulus and exponent."""
    pkcs11 = binding()
    from pkcs11.util.ec import encode_ec_public_key
    from pkcs11.util.rsa import encode_rsa_public_key

    # Its twin has the private key's label and id (as generate_token_key and pkcs11-tool make them).
    twins = list(session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PUBLIC_KEY,
                                      pkcs11.Attribute.LABEL: private.label, pkcs11.Attribute.ID: private.id}))
    public = twins[0] if len(twins) == 1 else None
    if private.key_type == pkcs11.KeyType.RSA:
        der = encode_rsa_public_key(public or private)
        return serialization.load_der_public_key(_spki_rsa(der))
    if private.key_type == pkcs11.KeyType.EC and public is not None:
        return serialization.load_der_public_key(encode_ec_public_key(public))
    raise TokenError(f"the token holds no public key object beside {uri.object!r} (needed for EC keys)",
                     "import the public key into the token with the same label and id (pkcs11-tool --write-object KEY.pub --type pubkey)")


def _spki_rsa(pkcs1_der: bytes) -> bytes:
    from asn1crypto import keys

    return keys.PublicKeyInfo({"algorithm": {"algorithm": "rsa"}, "public_key": keys.RSAPublicKey.load(pkcs1_der)}).dump()


def _open(conn, uri: Pkcs11Uri):
    session = conn.session()
    private = conn.private_key(uri)
    return private, _public_key_of(session, uri, private)


def open_token_key(text: str):
    """The key a pkcs11: URI names, checked to be there now (TokenError says why not)."""
    uri = Pkcs11Uri.parse(text)
    conn = connection(uri)
    pkcs11 = binding()
    with conn.lock:
        try:
            try:
                private, public = _open(conn, uri)
            except Exception as exc:
                if not is_gone(exc):
                    raise
                conn.reset()  # a session from before the token went away: once more, afresh
                private, public = _open(conn, uri)
        except TokenError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("pkcs11"):
                raise TokenError(f"the token {uri.path.get('token', '')!r} failed ({type(exc).__name__}: {exc})",
                                 "check the HSM is connected; pkcs11-tool --module MODULE --list-slots shows it") from None
            raise
    if private.key_type == pkcs11.KeyType.RSA:
        return TokenRSAPrivateKey(uri, public)
    if private.key_type == pkcs11.KeyType.EC:
        return TokenECPrivateKey(uri, public)
    raise TokenError(f"the key {uri.object!r} is a {private.key_type.name} key", "scepd uses RSA and EC keys")


def generate_token_key(text: str, kind: str, size: int | str, reuse: bool = False):
    """A new non-extractable key pair in the token at `text`: ("rsa", bits) or ("ec", curve
    name). Never replaces an object of that label: refused, or with `reuse` opened."""
    from pkcs11.util.ec import encode_named_curve_parameters

    pkcs11 = binding()
    uri = Pkcs11Uri.parse(text)
    private_template = {pkcs11.Attribute.TOKEN: True, pkcs11.Attribute.PRIVATE: True, pkcs11.Attribute.SENSITIVE: True,
                        pkcs11.Attribute.EXTRACTABLE: False}
    conn = connection(uri)
    with conn.lock:
        session = conn.session()
        if list(session.get_objects({pkcs11.Attribute.LABEL: uri.object})):
            if reuse:
                return open_token_key(text)
            raise TokenError(f"the token holds an object labelled {uri.object!r} already",
                             "name another object, or remove it yourself (pkcs11-tool --delete-object) if it is unused")
        common = {"store": True, "label": uri.object, "id": session.generate_random(64),
                  "private_template": private_template, "public_template": {pkcs11.Attribute.TOKEN: True}}
        if kind == "rsa":
            session.generate_keypair(pkcs11.KeyType.RSA, size, **common)
        else:
            params = session.create_domain_parameters(
                pkcs11.KeyType.EC, {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters(size)}, local=True)
            params.generate_keypair(**common)
    return open_token_key(text)


def taken_labels(text: str, labels: list[str]) -> list[str]:
    """Which of `labels` name objects in the token at `text` already."""
    pkcs11 = binding()
    conn = connection(Pkcs11Uri.parse(text))
    with conn.lock:
        session = conn.session()
        return [label for label in labels if list(session.get_objects({pkcs11.Attribute.LABEL: label}))]


def is_token_key(key) -> bool:
    return isinstance(key, TokenKey)


def key_attributes(key: TokenKey) -> dict[str, bool]:
    """CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_TOKEN of the private key object, as the token says."""
    pkcs11 = binding()
    return key._run(lambda k: {"sensitive": bool(k[pkcs11.Attribute.SENSITIVE]),
                               "extractable": bool(k[pkcs11.Attribute.EXTRACTABLE]),
                               "token": bool(k[pkcs11.Attribute.TOKEN])})
