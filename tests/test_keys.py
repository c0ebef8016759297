"""Key files, the authorized-keys directory, who may say what, and the ZAP check on real
CURVE sockets (no cluster: a ROUTER with an orchestrator's key and DEALERs as clients)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq

from swarmmesh import keys, protocol, transport
from swarmmesh.errors import ConfigError
from tests.conftest import wait_until


def test_keygen_writes_a_readable_pair_with_a_private_secret_and_never_overwrites(tmp_path: Path) -> None:
    public, secret = keys.keygen("drone-1", tmp_path, role="drone")
    assert (public.name, secret.name) == ("drone-1.key", "drone-1.key_secret")
    assert secret.stat().st_mode & 0o777 == 0o600
    info, no_secret = keys.read_cert(public)
    same, secret_key = keys.read_cert(secret)
    assert info == same and (info.name, info.role) == ("drone-1", "drone")
    assert no_secret is None and secret_key is not None and len(info.public) == len(secret_key) == 40
    # zmq's own reader agrees: the files are ZeroMQ certificates
    assert zmq.auth.load_certificate(secret) == (info.public.encode(), secret_key.encode())
    with pytest.raises(ConfigError, match="never overwritten"):
        keys.keygen("drone-1", tmp_path)


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "x" * 64, "drone 1"])
def test_keygen_refuses_names_that_are_not_node_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid key name"):
        keys.keygen(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_read_cert_refuses_files_that_are_no_key_and_load_authorized_skips_them(tmp_path: Path, caplog) -> None:
    keys.keygen("gw", tmp_path, role="gateway")
    (tmp_path / "junk.key").write_text("hello\n")
    (tmp_path / "bad-role.key").write_text((tmp_path / "gw.key").read_text().replace("gateway", "root"))
    shutil.copyfile(tmp_path / "gw.key", tmp_path / "copy.key")
    with pytest.raises(ConfigError, match="not a swarmmesh key file"):
        keys.read_cert(tmp_path / "junk.key")
    with pytest.raises(ConfigError, match="swarmmesh keygen"):
        keys.read_cert(tmp_path / "missing.key")
    with caplog.at_level(logging.WARNING, logger="swarmmesh.keys"):
        found = keys.load_authorized(tmp_path)
    assert [info.name for info in found.values()] == ["gw"]  # named by its metadata; gw.key is the duplicate
    assert "junk.key" in caplog.text and "bad-role.key" in caplog.text and "same key" in caplog.text


def _info(name: str, role: str) -> keys.KeyInfo:
    return keys.KeyInfo(name, role, "k" * 40)


@pytest.mark.parametrize(("info", "msg", "why"), [
    (_info("drone-1", "drone"), protocol.Hello(drone="drone-1", cores=1, slots=1, builder="simulated"), None),
    (_info("drone-1", "drone"), protocol.Hello(drone="drone-2", cores=1, slots=1, builder="simulated"),
     "claims to be drone 'drone-2'"),
    (_info("gateway", "gateway"), protocol.Hello(drone="drone-2", cores=1, slots=1, builder="simulated"),
     "not to a drone"),
    (_info("drone-1", "drone"), protocol.Request(op="reset", req_id="r", args={}), "may not send 'reset'"),
    (_info("drone-1", "drone"), protocol.Request(op="status", req_id="r", args={}), None),
    (_info("gateway", "gateway"), protocol.Request(op="reset", req_id="r", args={}), None),
    (_info("admin", "client"), protocol.Request(op="submit", req_id="r", args={}), None),
    (None, protocol.Request(op="status", req_id="r", args={}), "not authorized"),
])
def test_refusal_says_why_a_key_may_not_send_a_message(info, msg, why) -> None:
    got = keys.refusal(info, msg)
    assert got is None if why is None else why in (got or "")


def test_authorized_keys_follow_the_directory_and_report_removed_keys(tmp_path: Path) -> None:
    home, authorized = tmp_path / "keys", tmp_path / "authorized"
    authorized.mkdir()
    public, _ = keys.keygen("drone-1", home)
    gone: list[list[keys.KeyInfo]] = []
    watched = keys.AuthorizedKeys(authorized, on_removed=gone.append)
    watched.start()
    try:
        info, _ = keys.read_cert(public)
        assert watched.get(info.public) is None
        shutil.copyfile(public, authorized / public.name)
        wait_until(lambda: watched.get(info.public) == info, 5, what="the added key to be read")
        (authorized / public.name).unlink()
        wait_until(lambda: gone == [[info]], 5, what="the removed key to be reported")
        assert watched.get(info.public) is None
    finally:
        watched.close()


def test_an_authorized_keys_directory_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        keys.AuthorizedKeys(tmp_path / "nope")


def _curve(home: Path, name: str, servers: dict[str, bytes] | None = None) -> transport.Curve:
    own, secret = keys.read_cert(home / f"{name}.key_secret")
    return transport.Curve(public=own.public.encode(), secret=(secret or "").encode(), servers=servers or {})


@pytest.fixture
def server(tmp_path: Path):
    """A CURVE ROUTER with orch-1's key, gated by the authorized-keys directory."""
    home, authorized = tmp_path / "keys", tmp_path / "authorized"
    authorized.mkdir()
    keys.keygen("orch-1", home, role="orchestrator")
    ctx = transport.context(_curve(home, "orch-1"))
    gate = keys.Gatekeeper(keys.AuthorizedKeys(authorized), ctx)
    router = transport.router(ctx, "tcp://127.0.0.1:0")
    url = router.getsockopt(zmq.LAST_ENDPOINT).decode()
    server_key = keys.read_cert(home / "orch-1.key")[0].public.encode()
    yield SimpleNamespace(home=home, authorized=authorized, gate=gate, router=router, url=url, key=server_key)
    gate.close()
    ctx.destroy(linger=0)


def _client(s, name: str, role: str = "drone", authorize: bool = True) -> tuple[zmq.Context, zmq.Socket]:
    public, _ = keys.keygen(name, s.home, role=role)
    if authorize:
        shutil.copyfile(public, s.authorized / public.name)
        wait_until(lambda: s.gate.keys.get(keys.read_cert(public)[0].public), 5, what=f"{name}'s key read")
    ctx = transport.context(_curve(s.home, name, {s.url.removeprefix("tcp://"): s.key}))
    return ctx, transport.dealer(ctx, s.url, identity=name.encode())


def _received(router: zmq.Socket, timeout_ms: int) -> list[zmq.Frame] | None:
    return router.recv_multipart(copy=False) if router.poll(timeout_ms) else None


def test_only_authorized_keys_reach_the_router_and_frames_carry_their_key(server) -> None:
    ctx, dealer = _client(server, "drone-1")
    outsider_ctx, outsider = _client(server, "drone-x", authorize=False)
    try:
        outsider.send(b"from outside")
        dealer.send(b"hello")
        frames = _received(server.router, 5000)
        assert frames is not None and frames[1].bytes == b"hello"
        sender = server.gate.sender(frames[1])
        assert sender is not None and sender.name == "drone-1"
        assert _received(server.router, 300) is None  # the outsider's frame never arrives
    finally:
        ctx.destroy(linger=0)
        outsider_ctx.destroy(linger=0)


def test_a_client_refuses_a_server_that_does_not_hold_the_expected_key(server) -> None:
    keys.keygen("impostor", server.home, role="orchestrator")
    public, _ = keys.keygen("drone-1", server.home)
    shutil.copyfile(public, server.authorized / public.name)
    wrong = keys.read_cert(server.home / "impostor.key")[0].public.encode()
    ctx = transport.context(_curve(server.home, "drone-1", {server.url.removeprefix("tcp://"): wrong}))
    try:
        dealer = transport.dealer(ctx, server.url)
        dealer.send(b"hello")
        assert _received(server.router, 500) is None
        stray = transport.dealer(ctx)
        assert not transport.connect_to(stray, "tcp://127.0.0.1:1")  # no key for it: not connected
        stray.close(0)
    finally:
        ctx.destroy(linger=0)


def test_a_revoked_key_is_refused_on_a_live_connection(server, caplog) -> None:
    ctx, dealer = _client(server, "drone-1")
    try:
        dealer.send(b"first")
        frames = _received(server.router, 5000)
        assert frames is not None
        hello = protocol.Hello(drone="drone-1", cores=1, slots=1, builder="simulated")
        assert server.gate.allows(frames[1], hello)
        (server.authorized / "drone-1.key").unlink()
        wait_until(lambda: server.gate.sender(frames[1]) is None, 5, what="the key to be revoked")
        dealer.send(b"second")  # CURVE checked only the handshake: the gatekeeper refuses it
        frames = _received(server.router, 5000)
        assert frames is not None
        with caplog.at_level(logging.WARNING, logger="swarmmesh.keys"):
            assert not server.gate.allows(frames[1], hello)
        assert "not authorized" in caplog.text
    finally:
        ctx.destroy(linger=0)


def test_a_key_is_named_by_its_metadata_so_a_new_one_can_sit_beside_the_old(tmp_path: Path) -> None:
    keys.keygen("build.host-1", tmp_path / "new")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copyfile(tmp_path / "new" / "build.host-1.key", authorized / "build.host-1.rotated.key")
    (info,) = keys.load_authorized(authorized).values()
    assert info.name == "build.host-1"  # a dotted node name, under another file name
