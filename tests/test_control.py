"""Control-API input validation (the orchestrator re-validates everything the gateway sends)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmmesh.control import Control, _client_from, _deps_from, _finalize_shape, _refs_from, _unblock_key
from swarmmesh.errors import BadAtomsError, InputError, SwarmError
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


def test_limits_on_a_submission_are_refused_with_a_clear_error():
    from swarmmesh.control import MAX_BATCH_PACKAGES
    from swarmmesh.gentoo import MAX_LINE

    with pytest.raises(InputError, match="split it into several submissions"):
        _refs_from({"packages": [f"=app-misc/p{i}-1.0" for i in range(MAX_BATCH_PACKAGES + 1)]})
    with pytest.raises(BadAtomsError, match=f"longer than {MAX_LINE} characters"):
        _refs_from({"text": "=app-misc/a-1.0\n" + "x" * (MAX_LINE + 1)})


# --- fuzzing the POST /build parser: nothing escapes but the project's own error type ---------

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10)
_LINES = st.lists(st.one_of(
    st.text(max_size=40),
    st.sampled_from(["=app-misc/a-1.0", "app-misc/b-2", "=cat/p-1::repo", "[ebuild  N  ] app-misc/c-1.0",
                     "; rm -rf /", "$(reboot)", "`id`", "=a/b-1\n=c/d-2", "../../etc/passwd", "=a/b-1 && x"]),
), max_size=8)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(
    st.builds(lambda lines: {"text": "\n".join(lines)}, _LINES),
    st.builds(lambda items: {"packages": items}, st.lists(_JSONISH, max_size=6)),
    st.dictionaries(st.sampled_from(["text", "packages", "deps", "client"]), _JSONISH, max_size=4),
))
def test_fuzzed_submissions_parse_or_raise_swarm_errors_only(args):
    try:
        refs = _refs_from(args)
        _deps_from(args.get("deps"))
        _client_from(args.get("client"))
    except SwarmError:
        return
    for ref in refs:  # what is accepted is a plain atom: no shell metacharacters, no newlines
        assert not set(ref.key) & set(";|&$`<>\\\n\r \t\"'*?()")
