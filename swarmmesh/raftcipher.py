"""Authenticated encryption of the orchestrators' Raft traffic, in place of PySyncObj's Fernet.

PySyncObj seals every message it sends between orchestrators with the object its SyncObj
exposes as `encryptor`: `encrypt_at_time(data, t)` on send; `extract_timestamp(token)` then
`decrypt(token)` on receipt, any exception dropping the connection. Its own choice, Fernet,
cost about 8 % of all the CPU a busy cluster spends per package (`bench/dispatch.py`, 2 cores;
15 % of a follower's Python time): base64 both ways, AES-CBC plus a separate HMAC, and a
receiver that verifies each message twice (once for the timestamp, once for the data).
`RaftCipher` keeps that interface and PySyncObj's key derivation (PBKDF2-SHA256 of the cluster
secret, 100,000 rounds) but seals with AES-256-GCM: one C call each way, binary, the header
authenticated with the data.

Nonces: each cipher starts at a random 96-bit value and counts up, so one process never
repeats a nonce and two processes would need overlapping ranges of 2**96 to collide (random
nonces alone are good for about 2**32 messages per key, which a busy cluster reaches in weeks).

Every orchestrator of a cluster must seal the same way: a node running a version with the other
cipher cannot join, and says nothing (PySyncObj drops the connection silently).
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pysyncobj import SyncObj

#: First byte of every token: a later format can be told apart and refused.
VERSION = 0xA1
_SALT = b"swarmmesh raft aes-256-gcm v1"
_ROUNDS = 100_000
_NONCE = 12
_HEADER = struct.Struct(">BQ")  # version, sender's timestamp; then the nonce
_PREFIX = _HEADER.size + _NONCE
_TAG = 16
_NONCES = 1 << (8 * _NONCE)


class RaftCipher:
    """What PySyncObj's TCP connections call to seal and open messages (see module docstring)."""

    def __init__(self, secret: str, first_nonce: int | None = None) -> None:
        """`first_nonce`: for tests; random otherwise."""
        kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=_SALT, iterations=_ROUNDS)
        self._aead = AESGCM(kdf.derive(secret.encode()))
        self._start = int.from_bytes(os.urandom(_NONCE), "big") if first_nonce is None else first_nonce
        self._count = itertools.count()  # next() is atomic under the GIL: safe from any thread

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        nonce = ((self._start + next(self._count)) % _NONCES).to_bytes(_NONCE, "big")
        header = _HEADER.pack(VERSION, current_time) + nonce
        return header + self._aead.encrypt(nonce, data, header)

    def extract_timestamp(self, token: bytes) -> int:
        """The sender's timestamp, unverified: `decrypt` follows at once and authenticates it
        with the data, and a forged one only drops the connection a step later."""
        return _HEADER.unpack_from(self._prefix(token))[1]

    def decrypt(self, token: bytes) -> bytes:
        header = self._prefix(token)
        try:
            return self._aead.decrypt(header[_HEADER.size:], token[_PREFIX:], header)
        except InvalidTag:
            raise ValueError("Raft message failed authentication: another cluster's secret, or tampered") from None

    @staticmethod
    def _prefix(token: bytes) -> bytes:
        if len(token) < _PREFIX + _TAG or token[0] != VERSION:
            raise ValueError("not a sealed swarmmesh Raft message")
        return bytes(token[:_PREFIX])


class SealedSyncObj(SyncObj):
    """A SyncObj whose transport seals with `RaftCipher`: PySyncObj's connections read the cipher
    from this property. Build it with `password=None` in the SyncObjConf, so PySyncObj neither
    derives a Fernet key it would not use nor runs unsealed (the property is never None)."""

    def __init__(self, secret: str, *args: Any, **kwargs: Any) -> None:
        self._cipher = RaftCipher(secret)  # before SyncObj starts its transport, which reads it
        super().__init__(*args, **kwargs)

    @property
    def encryptor(self) -> RaftCipher:
        return self._cipher
