"""Encryption at rest for C2 fields: AES-256-GCM values and HMAC blind indexes.

A stored value is ``v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>``. The associated data
binds it to ``table.column#row-id``, so a ciphertext copied to another row or column fails to
decrypt. Blind indexes use a separate key (HKDF-derived) so equality search and dedup work
without decrypting, and knowing index values reveals nothing about the data key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import FinCRMError

__all__ = ["Keyring", "DecryptError", "load_master_key", "aad_for"]


class DecryptError(FinCRMError):
    code = "decrypt_failed"


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


def key_id(master: bytes) -> str:
    return hashlib.sha256(b"fincrm-key-id" + master).hexdigest()[:8]


def aad_for(table: str, column: str, row_id: int) -> bytes:
    return f"{table}.{column}#{row_id}".encode()


@dataclass
class Keyring:
    """The current data key plus older ones (for reading until ``keys rotate`` re-encrypts)."""

    master: bytes
    previous: list[bytes] = field(default_factory=list)
    # The blind-index key does not rotate with the data key (indexes would all change);
    # it defaults to one derived from the master key for single-key setups and tests.
    index_key: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.master) != 32:
            raise ValueError("the master key must be 32 bytes (AES-256)")
        self.current_id = key_id(self.master)
        self._aead = {key_id(k): AESGCM(_derive(k, b"fincrm-data-v1")) for k in [self.master, *self.previous]}
        self._index_key = _derive(self.index_key or self.master, b"fincrm-blind-index-v1")

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuilt from its keys (the cipher objects do not pickle): import workers, which are
        this application's own child processes, receive it through a local pipe."""
        return (Keyring, (self.master, list(self.previous), self.index_key))

    def encrypt(self, plaintext: str, aad: bytes) -> str:
        nonce = os.urandom(12)
        ct = self._aead[self.current_id].encrypt(nonce, plaintext.encode("utf-8"), aad)
        return f"v1.{self.current_id}.{base64.urlsafe_b64encode(nonce + ct).decode()}"

    def decrypt(self, token: str, aad: bytes) -> str:
        try:
            version, kid, body = token.split(".", 2)
            raw = base64.urlsafe_b64decode(body.encode())
            if version != "v1" or kid not in self._aead:
                raise DecryptError("value was encrypted with an unknown key")
            return self._aead[kid].decrypt(raw[:12], raw[12:], aad).decode("utf-8")
        except (ValueError, InvalidTag) as exc:
            raise DecryptError("stored value failed authentication (tampered or moved)") from exc

    def key_id_of(self, token: str) -> str:
        return token.split(".", 2)[1]

    def blind_index(self, scope: str, normalized: str) -> str:
        """HMAC-SHA256 over the normalised value, scoped to ``entity.field``."""
        return hmac.digest(self._index_key, f"{scope}\x00{normalized}".encode(), "sha256").hex()  # OpenSSL one-shot


def load_previous_keys(env_value: str | None, key_file: Path | None) -> list[bytes]:
    """Older master keys still needed to read values not yet re-encrypted by ``keys rotate``:
    ``FINCRM_PREVIOUS_MASTER_KEYS`` (comma-separated base64) and ``<key file>.old-*`` files."""
    keys = [base64.b64decode(k.strip()) for k in (env_value or "").split(",") if k.strip()]
    if key_file is not None:
        keys += [base64.b64decode(p.read_text().strip()) for p in sorted(key_file.parent.glob(key_file.name + ".old-*"))]
    for k in keys:
        if len(k) != 32:
            raise ValueError("every previous master key must be 32 bytes, base64-encoded")
    return keys


def load_master_key(env_value: str | None, key_file: Path | None) -> bytes:
    """``FINCRM_MASTER_KEY`` (base64, 32 bytes) wins; otherwise a key file, created 0600 if missing."""
    if env_value:
        key = base64.b64decode(env_value.strip())
        if len(key) != 32:
            raise ValueError("FINCRM_MASTER_KEY must be 32 bytes, base64-encoded")
        return key
    if key_file is None:
        raise ValueError("no master key: set FINCRM_MASTER_KEY or a key file")
    if key_file.exists():
        key = base64.b64decode(key_file.read_text().strip())
        if len(key) != 32:
            raise ValueError(f"{key_file} does not hold a 32-byte base64 key")
        return key
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
    return key
