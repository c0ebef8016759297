"""Control-API input validation (the orchestrator re-validates everything the gateway sends)."""

from __future__ import annotations

import pytest

from swarmmesh.control import Control, _client_from, _deps_from, _finalize_shape, _refs_from, _unblock_key
from swarmmesh.errors import BadAtomsError, InputError
from swarmmesh.protocol import Reply, Request
from tests.fakes import FakeNode


def test_refs_from_text_and_lists():
    assert [r.key for r in _refs_from({"text": "=a-b/c-1.0\nd-e/f-2::repo\n"})] == ["a-b/c-1.0", "d-e/f-2::repo"]
    assert [r.cpv for r in _refs_from({"packages": ["=a-b/c-1.0"]})] == ["a-b/c-1.0"]


@pytest.mark.parametrize("args", [{}, {"text": "=a/b-1", "packages": ["=a/b-1"]}, {"text": 5}, {"packages": "x"}])
def test_refs_from_needs_exactly_one_form(args):
    with pytest.raises(InputError):
        _refs_from(args)


def test_refs_from_lists_bad_lines():
    with pytest.raises(BadAtomsError) as info:
        _refs_from({"packages": ["=a-b/c-1.0", "nope", 7]})
    assert [b[0] for b in info.value.bad_lines] == [2, 3]


def test_deps_are_normalised_to_keys():
    assert _deps_from({"=a-b/c-1.0": ["=a-b/d-2.0::gentoo"]}) == {"a-b/c-1.0": ["a-b/d-2.0::gentoo"]}
    assert _deps_from(None) is None
    for bad in (["x"], {"=a-b/c-1.0": "d"}, {"=a-b/c-1.0": [1]}):
        with pytest.raises(InputError):
            _deps_from(bad)
    with pytest.raises(InputError):
        _deps_from({"not an atom": []})


def test_client_names():
    assert _client_from(None) == "anonymous"
    assert _client_from("alice@desk") == "alice@desk"
    for bad in ("", "x" * 129, "line\nbreak", 5):
        with pytest.raises(InputError):
            _client_from(bad)


def test_unblock_keys_are_cpvs_or_drone_names():
    assert _unblock_key("=a-b/c-1.0") == "a-b/c-1.0"
    assert _unblock_key("drone-3") == "drone-3"
    with pytest.raises(InputError):
        _unblock_key("bad\x00name")


def test_refused_finalize_says_how_many():
    ok, code, error, value = _finalize_shape({"ok": False, "code": "refused", "needed": 3, "delegated": 2})
    assert not ok and code == "refused" and "3 package(s) still needed and 2 being built" in error
    assert value == {"needed": 3, "delegated": 2}


def test_a_follower_shows_its_own_view_but_sends_swarm_to_the_leader(tmp_path):
    """`view` is how the chaos checks compare each node's applied queue; `swarm` stays the leader's."""
    node = FakeNode("o2", tmp_path / "o2")  # a follower of o1
    control = Control(node, node.config, fingerprint=lambda: "f", dispatch_new=lambda keys, deps: None,
                      balance=lambda reply: None, serving=lambda: None)
    control.handle(b"c", Request(op="view", req_id="1"))
    control.handle(b"c", Request(op="swarm", req_id="2"))
    (_, view), (_, swarm) = node.sent
    assert isinstance(view, Reply) and isinstance(swarm, Reply)
    assert view.ok and (view.result["node"], view.result["leader"], view.result["term"]) == ("o2", "o1", 1)
    assert view.result["counts"]["total"] == 0
    assert (swarm.ok, swarm.code, swarm.leader) == (False, "not_leader", "o1")
