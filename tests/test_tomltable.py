"""Writing TOML: toml_value spells any value so that TOML reads it back unchanged."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmmesh.errors import ConfigError
from swarmmesh.tomltable import toml_value


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))
def test_toml_value_round_trips_any_string(text):
    assert tomllib.loads(f"v = {toml_value(text)}")["v"] == text


@given(st.recursive(
    st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(exclude_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
))
def test_toml_value_round_trips_values(value):
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_toml_value_paths_and_refusals():
    assert toml_value(Path("/a b")) == '"/a b"'
    with pytest.raises(ConfigError, match="cannot write"):
        toml_value(None)
