"""The orchestrator's package signer: the one object the upload path and the release check use.

Why one object: a package is signed exactly once, by the leader, after validation and before
`received` is committed, and every orchestrator verifies every file of a release before it
serves it. Both need the same two things, built once from ``[signing]``: the swarm's secret
key (`swarmmesh.signing`) and the keyring of public keys whose signatures are accepted (the
key itself plus `trusted`, the old keys of a rotation). The GPKG layout is
`swarmmesh.gpkg_signing`'s business.

Signatures are made in-process (pysequoia, ~0.3 ms each, three per package); a lock keeps one
signature at a time, since uploads are validated on the socket loop and on worker threads.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from swarmmesh import gpkg, gpkg_signing
from swarmmesh.config import SigningConfig
from swarmmesh.errors import ArtifactError, SignatureError
from swarmmesh.gpkg_signing import Signed
from swarmmesh.signing import GnupgKey, Keyring, SequoiaKey, SigningKey

log = logging.getLogger(__name__)


class PackageSigner:
    """Signs validated packages with the swarm key; verifies them against the swarm keyring."""

    def __init__(self, key: SigningKey, keyring: Keyring, tmp_dir: Path) -> None:
        self.key, self.keyring, self.tmp_dir = key, keyring, tmp_dir
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: SigningConfig, tmp_dir: Path) -> PackageSigner:
        """The signer a node config describes; ConfigError names what is wrong with it."""
        key: SigningKey
        if config.key_file is not None:
            key = SequoiaKey(config.key_file)
        else:
            assert config.gnupg_home is not None and config.key is not None  # config.py checked
            key = GnupgKey(config.gnupg_home, config.key)
        trusted = Keyring.from_files(list(config.trusted))
        keyring = Keyring([key.public_key(), trusted.armored()] if trusted.fingerprints else [key.public_key()])
        log.info("signing packages with %s; accepting %s", key.fingerprint, ", ".join(keyring.fingerprints))
        return cls(key, keyring, tmp_dir)

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint

    def public_keys(self) -> str:
        """Every accepted public key, armoured: what ``/signing-key.asc`` serves and clients trust."""
        return self.keyring.armored()

    def sign(self, info: gpkg.GpkgInfo, source: bytes | Path, label: str) -> tuple[gpkg.GpkgInfo, Signed]:
        """`source`, validated as `info`, signed: its new digests (and signer) and the signed bytes
        or temp file, which replaces the upload. A signature the upload carried is dropped."""
        with self._lock:
            signed = gpkg_signing.sign_gpkg(self.key, source, self.tmp_dir, label)
        return dataclasses.replace(info, size=signed.size, sha256=signed.sha256, md5=signed.md5,
                                   sha1=signed.sha1, signer=signed.signer), signed

    def verify(self, source: bytes | Path, label: str) -> str:
        """The fingerprint of the accepted key that signed `source`; SignatureError otherwise."""
        return gpkg_signing.verify_gpkg(self.keyring, source, label)


class ReleaseCheck:
    """Every file of a release verified against the keyring before the release is served.

    Files are content-addressed, so a sha256 that verified once stays verified (for this
    process's keyring): each release costs only the verification of its new files."""

    def __init__(self, signer: PackageSigner | None) -> None:
        self._signer = signer
        self._verified: set[str] = set()

    def failures(self, files: list[dict], path: Callable[[str], Path]) -> list[tuple[dict, str]]:
        """(file record, why) for each file of the release that fails; nothing without a signer."""
        if self._signer is None:
            return []
        bad = []
        for f in files:
            sha = f["sha256"]
            if sha in self._verified:
                continue
            try:
                self._signer.verify(path(sha), f.get("key") or sha)
            except (SignatureError, ArtifactError, OSError) as exc:
                bad.append((f, str(exc)))
            else:
                self._verified.add(sha)
        return bad


def from_config(config: SigningConfig | None, tmp_dir: Path) -> PackageSigner | None:
    """None when the node has no ``[signing]``: packages are then stored and served unsigned."""
    return None if config is None else PackageSigner.from_config(config, tmp_dir)


__all__ = ["PackageSigner", "ReleaseCheck", "SignatureError", "from_config"]
