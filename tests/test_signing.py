"""The swarm's signing key and keyring (signing.py)."""

from __future__ import annotations

import stat

import pytest

from swarmmesh import signing
from swarmmesh.errors import ConfigError, SignatureError


def test_generate_key_writes_a_private_secret_and_a_public_key_and_never_overwrites(tmp_path):
    made = signing.generate_key(tmp_path / "k")
    assert stat.S_IMODE(made.secret.stat().st_mode) == 0o600
    assert "BEGIN PGP PUBLIC KEY BLOCK" in made.public.read_text() and len(made.fingerprint) == 40
    key = signing.SequoiaKey(made.secret)
    assert key.fingerprint == made.fingerprint
    assert signing.Keyring([key.public_key()]).fingerprints == [made.fingerprint]
    with pytest.raises(ConfigError, match="already exists; a new key goes into a new directory"):
        signing.generate_key(tmp_path / "k")


def test_a_public_key_is_not_a_signing_key(tmp_path):
    made = signing.generate_key(tmp_path)
    with pytest.raises(ConfigError, match="not a usable OpenPGP secret key"):
        signing.SequoiaKey(made.public)


def test_keyring_names_the_signer_and_refuses_other_keys_and_changed_data(tmp_path):
    one, two = (signing.SequoiaKey(signing.generate_key(tmp_path / n).secret) for n in "ab")
    keyring = signing.Keyring([one.public_key()])
    assert keyring.verify_detached(b"data", one.detached(b"data")) == one.fingerprint
    assert keyring.verify_clearsigned(one.clearsign(b"text\n")) == (one.fingerprint, b"text\n")
    with pytest.raises(SignatureError, match="not signed by any of the swarm's keys"):
        keyring.verify_detached(b"data", two.detached(b"data"))
    with pytest.raises(SignatureError):
        keyring.verify_detached(b"DATA", one.detached(b"data"))
