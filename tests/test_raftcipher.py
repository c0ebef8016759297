"""The Raft traffic cipher: what PySyncObj's connections seal and open."""

from __future__ import annotations

import pytest

from swarmmesh.cluster import init_cluster
from swarmmesh.config import load_config
from swarmmesh.election import Election
from swarmmesh.raftcipher import RaftCipher
from tests.conftest import wait_until

SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def pair():
    """Two ends of one cluster: same secret, each with its own nonce counter."""
    return RaftCipher(SECRET), RaftCipher(SECRET)


def test_a_message_opens_on_another_node_with_its_timestamp(pair):
    sender, receiver = pair
    token = sender.encrypt_at_time(b"append entries", 1234)
    assert b"append entries" not in token
    assert receiver.extract_timestamp(token) == 1234
    assert receiver.decrypt(token) == b"append entries"
    assert receiver.decrypt(sender.encrypt_at_time(b"", 0)) == b""


@pytest.mark.parametrize("where", [0, 1, 8, 9, 20, 21, -17, -1])
def test_any_changed_byte_is_refused(pair, where):
    """Version, timestamp, nonce, ciphertext and tag are all covered by the authentication."""
    sender, receiver = pair
    token = bytearray(sender.encrypt_at_time(b"x" * 40, 7))
    token[where] ^= 0x01
    with pytest.raises(ValueError):
        receiver.decrypt(bytes(token))


def test_another_clusters_secret_cannot_open_a_message(pair):
    sender, _ = pair
    with pytest.raises(ValueError, match="authentication"):
        RaftCipher("another cluster's secret, 32 chars").decrypt(sender.encrypt_at_time(b"hi", 1))


@pytest.mark.parametrize("token", [b"", b"\xa1" + bytes(20), bytes(64)])
def test_a_short_or_foreign_token_is_refused(pair, token):
    with pytest.raises(ValueError, match="not a sealed"):
        pair[1].extract_timestamp(token)
    with pytest.raises(ValueError, match="not a sealed"):
        pair[1].decrypt(token)


def test_nonces_never_repeat_and_wrap_around_the_96_bit_space():
    sender = RaftCipher(SECRET, first_nonce=(1 << 96) - 3)  # three messages before the wrap
    nonces = [sender.encrypt_at_time(b"m", 1)[9:21] for _ in range(10_000)]
    assert len(set(nonces)) == 10_000
    assert nonces[2:4] == [((1 << 96) - 1).to_bytes(12, "big"), bytes(12)]


def test_the_sync_object_hands_its_transport_the_cipher(tmp_path):
    """As election.py builds it: PySyncObj's connections read `encryptor`, and PySyncObj's own
    Fernet is not set up as well."""
    init_cluster(tmp_path, orchestrators=1, drones=0, base_port=0)
    member = Election(load_config(tmp_path / "orch-1.toml"))
    try:
        assert isinstance(member._raft.encryptor, RaftCipher)
        assert member._raft.conf.password is None
    finally:
        member.close()
        wait_until(lambda: not member._raft.tick_thread_alive(), 10, what="the Raft thread to stop")
