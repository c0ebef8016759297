"""Signed GPKGs as Portage's gpkg-sign writes them (gpkg_signing.py): signing keeps every member,
replaces an uploaded signature, and verification refuses unsigned, foreign and changed files.
That a real Portage client accepts them is tests/integration/test_signing.py's job."""

from __future__ import annotations

import io
import tarfile

import pytest

from swarmmesh import gpkg, gpkg_signing, gpkg_writer, signing
from swarmmesh.errors import SignatureError


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return [signing.SequoiaKey(signing.generate_key(root / name).secret) for name in ("old", "new")]


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}


def test_signing_keeps_every_member_and_adds_the_signatures_portage_writes(keys, tmp_path):
    raw = gpkg_writer.gpkg_bytes("app-misc/hello-1.0", size=8192)
    signed = gpkg_signing.sign_gpkg(keys[0], raw, tmp_path)
    before, after = members(raw), members(signed.data)
    assert list(after) == ["gpkg-1", "metadata.tar.gz", "metadata.tar.gz.sig", "image.tar.gz",
                           "image.tar.gz.sig", "Manifest"]  # gpkg-sign's order: a .sig right after its file
    assert all(after[name] == before[name] for name in before if name != "Manifest")
    assert after["Manifest"].startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")
    info = gpkg.inspect_gpkg(tmp_path / "x.gpkg.tar", data=signed.data)  # still a valid package
    assert (info.sha256, info.size, info.md5, info.sha1) == (signed.sha256, signed.size, signed.md5, signed.sha1)
    assert gpkg_signing.verify_gpkg(signing.Keyring([keys[0].public_key()]), signed.data) == keys[0].fingerprint


def test_a_file_source_signs_to_the_same_layout_and_an_uploaded_signature_is_replaced(keys, tmp_path):
    theirs = gpkg_signing.sign_gpkg(keys[0], gpkg_writer.gpkg_bytes("app-misc/hello-1.0"), tmp_path)
    path = tmp_path / "in.gpkg.tar"
    path.write_bytes(theirs.data)
    ours = gpkg_signing.sign_gpkg(keys[1], path, tmp_path)
    assert ours.data is None and ours.path.parent == tmp_path and ours.signer == keys[1].fingerprint
    data = ours.path.read_bytes()
    assert list(members(data)) == list(members(theirs.data))
    assert gpkg_signing.verify_gpkg(signing.Keyring([keys[1].public_key()]), data) == keys[1].fingerprint
    with pytest.raises(SignatureError, match="not signed by any of the swarm's keys"):
        gpkg_signing.verify_gpkg(signing.Keyring([keys[0].public_key()]), data)


def test_both_keys_of_a_rotation_verify(keys, tmp_path):
    both = signing.Keyring([keys[0].public_key(), keys[1].public_key()])
    for key in keys:
        signed = gpkg_signing.sign_gpkg(key, gpkg_writer.gpkg_bytes("app-misc/hello-1.0"), tmp_path)
        assert gpkg_signing.verify_gpkg(both, signed.data) == key.fingerprint


def test_unsigned_and_changed_packages_are_refused(keys, tmp_path):
    keyring = signing.Keyring([keys[0].public_key()])
    raw = gpkg_writer.gpkg_bytes("app-misc/hello-1.0", size=8192)
    with pytest.raises(SignatureError, match="unsigned"):
        gpkg_signing.verify_gpkg(keyring, raw)
    data = bytearray(gpkg_signing.sign_gpkg(keys[0], raw, tmp_path).data)
    image = data.find(members(raw)["image.tar.gz"][100:140])
    data[image] ^= 0xFF  # one byte of the image, after signing
    with pytest.raises(SignatureError, match="image.tar.gz does not match"):
        gpkg_signing.verify_gpkg(keyring, bytes(data))
