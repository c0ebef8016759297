"""The swarm's OpenPGP signing key, and the public keys its signatures are checked against.

Portage clients verify every binary package with GnuPG (since 3.0.78 by default), so the
leader signs each package before `received` is committed (`swarmmesh.gpkg_signing` says how
a GPKG is signed). Two kinds of key, one interface (`SigningKey`):

- `SequoiaKey`: a secret key file (``swarmmesh keygen --signing``), signing in-process with
  Sequoia-PGP (pysequoia): ~0.1 ms per signature. A gpg subprocess per signature, as Portage's
  own ``gpkg-sign`` does, took ~29 ms (gpg-agent round trips): three signatures per package
  would cap the leader near 12 packages/s.
- `GnupgKey`: a key that lives in an existing GnuPG home (a smartcard, a key the operator
  already publishes): signs with the gpg command, streaming, at gpg's pace.

A `Keyring` holds the public keys the swarm accepts (its signing key, plus the keys of a
rotation still in overlap) and says which of them made a signature.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pysequoia as pgp

from swarmmesh.errors import ConfigError, SignatureError

log = logging.getLogger(__name__)

SECRET_FILE = "signing-key.sec.asc"  # noqa: S105 - a file name, not a secret
PUBLIC_FILE = "signing-key.asc"
DEFAULT_USER_ID = "swarmmesh binary packages <swarmmesh@localhost>"
_GPG_TIMEOUT = 600.0  # one signature of a multi-GiB member, at gpg's pace


class SigningKey(Protocol):
    """A secret key that makes the two kinds of signature a GPKG carries."""

    @property
    def fingerprint(self) -> str:
        """Of the primary key, upper-case hex (as gpg and Portage print it)."""

    def public_key(self) -> str:
        """The certificate, ASCII-armoured, for clients and the keyring."""

    def detached(self, data: bytes) -> bytes:
        """An armoured detached signature of `data` (what ``gpg --detach-sig --armor`` writes)."""

    def detached_file(self, path: Path) -> bytes:
        """The same for a whole file, read by the signer (bounded memory for any size)."""

    def clearsign(self, text: bytes) -> bytes:
        """`text` clear-signed (``gpg --clear-sign``): the Manifest of a signed GPKG."""


class SequoiaKey:
    """A secret key file signing in-process. The key must have no passphrase: the orchestrator
    signs unattended (protect the file: it is written mode 0600)."""

    def __init__(self, path: Path) -> None:
        try:
            tsk = pgp.Tsk.from_file(str(path))
            self._signer = tsk.signer()
        except Exception as exc:  # pysequoia raises plain exceptions for every parse failure
            raise ConfigError(f"{path}: not a usable OpenPGP secret key without passphrase ({_why(exc)}); "
                              "make one with `swarmmesh keygen --signing --dir DIR`") from exc
        self.path = path
        self._cert = tsk.extract_certificate()
        self._public = str(self._cert)

    @property
    def fingerprint(self) -> str:
        return self._cert.fingerprint.upper()

    def public_key(self) -> str:
        return self._public

    def detached(self, data: bytes) -> bytes:
        return pgp.sign(self._signer, data, mode=pgp.SignatureMode.DETACHED)

    def detached_file(self, path: Path) -> bytes:
        out = path.with_name(path.name + ".sig")
        try:
            pgp.sign_file(self._signer, str(path), str(out), mode=pgp.SignatureMode.DETACHED)
            return out.read_bytes()
        finally:
            out.unlink(missing_ok=True)

    def clearsign(self, text: bytes) -> bytes:
        return pgp.sign(self._signer, text, mode=pgp.SignatureMode.CLEAR)


class GnupgKey:
    """A key in a GnuPG home, used through the gpg command the way Portage's own signing does
    (``--digest-algo SHA512 --local-user KEY``); data goes through a pipe, never into memory whole."""

    def __init__(self, home: Path, key: str, gpg: str = "gpg") -> None:
        self.home, self.key, self._gpg = home, key, shutil.which(gpg) or gpg
        exported = self._run(["--export", "--armor", key], b"")
        if b"BEGIN PGP PUBLIC KEY BLOCK" not in exported:
            raise ConfigError(f"[signing] key {key!r} is not in the GnuPG home {home}; list its keys with "
                              f"`gpg --homedir {home} --list-secret-keys`")
        self._public = exported.decode()
        self._fingerprint = pgp.Cert.from_bytes(exported).fingerprint.upper()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def public_key(self) -> str:
        return self._public

    def detached(self, data: bytes) -> bytes:
        return self._sign(["--detach-sig"], data)

    def detached_file(self, path: Path) -> bytes:
        return self._sign(["--detach-sig", "--", str(path)], b"")

    def clearsign(self, text: bytes) -> bytes:
        return self._sign(["--clear-sign"], text)

    def _sign(self, args: list[str], data: bytes) -> bytes:
        return self._run(["--armor", "--digest-algo", "SHA512", "--local-user", self.key, "--output", "-",
                          *args], data)

    def _run(self, args: list[str], data: bytes) -> bytes:
        argv = [self._gpg, "--homedir", str(self.home), "--batch", "--no-tty", "--yes", *args]
        try:
            done = subprocess.run(argv, input=data, capture_output=True, timeout=_GPG_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SignatureError(f"cannot run gpg to sign ({exc}); check [signing] gnupg_home and that gpg "
                                 "is installed") from exc
        if done.returncode != 0:
            raise SignatureError(f"gpg could not sign with {self.key!r} in {self.home}: "
                                 f"{done.stderr.decode(errors='replace').strip()[-400:]}")
        return done.stdout


@dataclass(frozen=True)
class KeyFiles:
    """What `generate_key` wrote."""

    secret: Path
    public: Path
    fingerprint: str


def generate_key(directory: Path, user_id: str = DEFAULT_USER_ID) -> KeyFiles:
    """A new signing key (Ed25519, no expiry, no passphrase) as two armoured files in
    `directory`; an existing key there is never overwritten (rotation makes a new directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    secret, public = directory / SECRET_FILE, directory / PUBLIC_FILE
    if secret.exists():
        raise ConfigError(f"{secret} already exists; a new key goes into a new directory "
                          "(see key rotation in README.md)")
    tsk = pgp.Tsk.generate(user_id)
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(str(tsk))
    cert = tsk.extract_certificate()
    public.write_text(str(cert))
    return KeyFiles(secret, public, cert.fingerprint.upper())


class Keyring:
    """The public keys whose signatures the swarm accepts, by fingerprint."""

    def __init__(self, armored: list[str]) -> None:
        self._certs: dict[str, pgp.Cert] = {}
        for text in armored:
            for cert in pgp.Cert.split_bytes(text.encode()):
                self._certs[cert.fingerprint.upper()] = cert

    @classmethod
    def from_files(cls, paths: list[Path]) -> Keyring:
        texts = []
        for path in paths:
            try:
                texts.append(path.read_text())
            except OSError as exc:
                raise ConfigError(f"cannot read the public key {path}: {exc.strerror or exc}") from exc
        try:
            return cls(texts)
        except Exception as exc:
            raise ConfigError(f"not an OpenPGP public key among {[str(p) for p in paths]}: {_why(exc)}") from exc

    @property
    def fingerprints(self) -> list[str]:
        return list(self._certs)

    def armored(self) -> str:
        """Every key, armoured, one block after the other: what clients import."""
        return "".join(str(cert) for cert in self._certs.values())

    def verify_detached(self, data: bytes, signature: bytes) -> str:
        """The fingerprint of the keyring key that made `signature` over `data`."""
        try:
            sig = pgp.Sig.from_bytes(signature)
            result = pgp.verify(bytes=data, store=self._store, signature=sig)
        except Exception as exc:
            raise self._refused(exc) from exc
        return self._signer(result)

    def verify_clearsigned(self, message: bytes) -> tuple[str, bytes]:
        """(fingerprint of the signer, the signed text) of a clear-signed message."""
        try:
            result = pgp.verify(bytes=message, store=self._store)
        except Exception as exc:
            raise self._refused(exc) from exc
        return self._signer(result), result.bytes or b""

    def _refused(self, exc: Exception) -> SignatureError:
        """pysequoia says only "no valid signatures": a foreign key, or data changed after signing."""
        return SignatureError(f"not signed by any of the swarm's keys ({', '.join(self._certs) or 'none'}), "
                              f"or changed after signing ({_why(exc)})")

    def _store(self, _key_ids: list[str]) -> list[pgp.Cert]:
        return list(self._certs.values())

    def _signer(self, result: pgp.Decrypted) -> str:
        for valid in result.valid_sigs:
            fingerprint = str(valid.certificate).upper()
            if fingerprint in self._certs:
                return fingerprint
        raise SignatureError(f"not signed by any of the swarm's keys ({', '.join(self._certs) or 'none'})")


def _why(exc: Exception) -> str:
    """The first line of a pysequoia error (the rest can be a Rust backtrace)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
