"""`swarmmesh client trust`: make a client's Portage trust the swarm's signing key.

A current Portage verifies every binary package against the GnuPG home named by
``BINPKG_GPG_VERIFY_GPG_HOME`` (default ``/etc/portage/gnupg``) and accepts only signatures by
keys that are valid there: getuto sets that home up with a local "Portage Local Trust Key"
(ultimately trusted) that locally signs (lsigns) each key it imports. A third-party binhost's
key has to be added the same way; this module does exactly that, with the gpg command, or
lists the commands (``--print``) for whoever prefers to run them by hand.

Portage verifies as user ``nobody``, so the home is left world-readable (as getuto leaves it).
gpg starts an agent for the home while it makes and uses the trust key; it is stopped at the end.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pysequoia as pgp

from swarmmesh.errors import InputError, SwarmError

log = logging.getLogger(__name__)

DEFAULT_HOME = Path("/etc/portage/gnupg")
TRUST_KEY_UID = "Portage Local Trust Key <trust@localhost>"
_GPG_TIMEOUT = 60.0
_KEY_FILE = "/tmp/swarmmesh-signing-key.asc"  # noqa: S108 - only in the printed commands


def portage_gnupg_home() -> Path:
    """The GnuPG home this machine's Portage verifies with (its make.conf), else the default."""
    try:
        import portage

        value = portage.settings.get("BINPKG_GPG_VERIFY_GPG_HOME", "")
    except Exception as exc:  # noqa: BLE001 - no usable Portage config: the documented default
        log.debug("cannot read Portage's settings (%s); using %s", exc, DEFAULT_HOME)
        value = ""
    return Path(value) if value else DEFAULT_HOME


def fingerprints(armored: str) -> list[str]:
    """The primary-key fingerprints of an armoured key block; InputError if it holds none."""
    try:
        certs = pgp.Cert.split_bytes(armored.encode())
    except Exception as exc:  # pysequoia raises plain exceptions for every parse failure
        raise InputError(f"not an OpenPGP public key ({str(exc).splitlines()[0] if str(exc) else exc}); "
                         "fetch it from the gateway's /signing-key.asc") from None
    if not certs:
        raise InputError("no OpenPGP public key in what was given; fetch it from the gateway's /signing-key.asc")
    return [cert.fingerprint.upper() for cert in certs]


def commands(home: Path, key_file: str, fprs: list[str], make_trust_key: bool = True) -> list[list[str]]:
    """The gpg commands that make `home` trust the keys of `key_file` (argv lists)."""
    gpg = ["gpg", "--homedir", str(home), "--batch", "--no-tty"]
    unattended = ["--pinentry-mode", "loopback", "--passphrase", ""]
    steps: list[list[str]] = [["mkdir", "-p", "-m", "700", str(home)]]
    if make_trust_key:
        steps.append([*gpg, *unattended, "--quick-gen-key", TRUST_KEY_UID, "ed25519", "sign", "never"])
    steps.append([*gpg, "--import", key_file])
    steps += [[*gpg, "--yes", *unattended, "--quick-lsign-key", fpr] for fpr in fprs]
    steps.append([*gpg, "--check-trustdb"])
    steps.append(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"])
    steps.append(["chmod", "-R", "a+rX", str(home)])
    return steps


def printed(home: Path, key_url: str, fprs: list[str]) -> str:
    """The commands as a shell script to read and run (as root): `--print`."""
    lines = [f"# make Portage trust the swarm's signing key(s) {', '.join(fprs)}",
             f"# in {home} (BINPKG_GPG_VERIFY_GPG_HOME); skip the --quick-gen-key line if getuto",
             "# (or an earlier run) already made the local trust key there",
             shlex.join(["curl", "-fsS", "-o", _KEY_FILE, key_url])]
    lines += [shlex.join(argv) for argv in commands(home, _KEY_FILE, fprs)]
    return "\n".join(lines) + "\n"


def trust(armored: str, home: Path) -> list[str]:
    """Import and lsign the keys of `armored` in `home` (made like getuto makes it if needed)."""
    fprs = fingerprints(armored)
    if shutil.which("gpg") is None:
        raise SwarmError("gpg is not installed; install GnuPG (app-crypt/gnupg), which Portage needs to verify")
    with tempfile.NamedTemporaryFile("w", suffix=".asc", delete=False) as fh:
        fh.write(armored)
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        for argv in commands(home, fh.name, fprs, make_trust_key=not _has_secret_key(home))[1:]:
            _run(argv)
    finally:
        os.unlink(fh.name)
    home.chmod(0o755)  # Portage verifies as user nobody
    log.info("%s now trusts %s", home, ", ".join(fprs))
    return fprs


def _has_secret_key(home: Path) -> bool:
    out = _run(["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-secret-keys"], check=False)
    return any(line.startswith("sec:") for line in out.splitlines())


def _run(argv: list[str], check: bool = True) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_GPG_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SwarmError(f"cannot run {argv[0]} ({exc}); is GnuPG installed?") from None
    if check and done.returncode != 0 and argv[0] != "gpgconf":
        raise SwarmError(f"`{shlex.join(argv)}` failed: {done.stderr.strip()[-400:]}; "
                         "run `swarmmesh client trust --print` to see every step")
    return done.stdout
