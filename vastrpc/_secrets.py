"""Sealing secrets for their recipient: AES-256-GCM under a key derived from a shared token.

The rule: a secret's value never leaves the client in the clear. The client seals it with
a key derived from the API key (the control service stores it sealed, so it is encrypted at
rest) and puts only an HMAC of it, keyed by the API key, into the environment digest (so a
changed value is a tier 3 update without the value being readable from the digest). When a
worker registers, the control service reseals each value with a key derived from that
worker's own token, which only it and the worker know.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vastrpc._errors import AuthenticationError

_VERSION = b"\x01"
_NONCE = 12


def _key(token: str) -> AESGCM:
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"vastrpc secrets v1")
    return AESGCM(kdf.derive(token.encode()))


def seal(token: str, secrets: Mapping[str, str]) -> dict[str, bytes]:
    """Each value encrypted for whoever holds ``token``, bound to its name."""
    aead = _key(token)
    out = {}
    for name, value in secrets.items():
        nonce = os.urandom(_NONCE)
        out[name] = _VERSION + nonce + aead.encrypt(nonce, value.encode(), name.encode())
    return out


def unseal(token: str, sealed: Mapping[str, bytes]) -> dict[str, str]:
    """The values of ``seal(token, ...)``.

    Raises:
        AuthenticationError: A value was sealed for another token or was altered.
    """
    aead = _key(token)
    out = {}
    for name, blob in sealed.items():
        if blob[:1] != _VERSION or len(blob) < 1 + _NONCE + 16:
            raise AuthenticationError(f"secret {name} is not a sealed vastrpc secret")
        try:
            out[name] = aead.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], name.encode()).decode()
        except InvalidTag:
            raise AuthenticationError(
                f"secret {name} was sealed for another key (was the API key changed?); redeploy to reseal it"
            ) from None
    return out


def reseal(from_token: str, to_token: str, sealed: Mapping[str, bytes]) -> dict[str, bytes]:
    """Sealed values re-encrypted for ``to_token``."""
    return seal(to_token, unseal(from_token, sealed))


def secret_digest(token: str, name: str, value: str) -> str:
    """A keyed digest of one secret: changes with the value, reveals nothing without the key."""
    return hmac.new(token.encode(), f"{name}={value}".encode(), hashlib.sha256).hexdigest()
