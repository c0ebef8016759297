"""The replicated commands: one frozen value each, whose wire form is the string-named call's."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from swarmmesh import commands
from swarmmesh.election import QueueState
from swarmmesh.queue import BuildQueue


@pytest.mark.parametrize("cls", list(commands.BY_NAME.values()), ids=list(commands.BY_NAME))
def test_a_command_has_the_parameters_of_the_queue_method_it_travels_as(cls):
    """`apply` passes the fields positionally: names and order must be the method's."""
    params = list(inspect.signature(getattr(BuildQueue, cls.NAME)).parameters)[1:]
    assert [f.name for f in dataclasses.fields(cls)] == params


def test_every_command_has_its_replicated_method_and_nothing_else_does():
    """The @replicated names are the journal's: PySyncObj numbers them in sorted order, so
    adding one that sorts before an existing name would shift every older entry."""
    replicated = sorted(name for name, fn in vars(QueueState).items()
                        if getattr(fn, "replicated", False) and getattr(fn, "origName", None) == name)
    assert replicated == sorted([*commands.BY_NAME, "update"])
    assert replicated[-1] == "update"


def test_encode_and_decode_are_inverse_and_keep_the_positional_order():
    cmd = commands.Fail("a/b-1", "d1", 3, "boom", 1.5, 2, 4)
    assert commands.encode(cmd) == ("fail", ["a/b-1", "d1", 3, "boom", 1.5, 2, 4])
    assert commands.decode(*commands.encode(cmd)) == cmd
    assert commands.decode("reset", []) == commands.Reset()
    assert commands.decode("renew", ["d1", 1, 5.0]) == commands.Renew("d1", 1, 5.0, None)


def test_decode_refuses_a_name_that_is_no_command_and_a_wrong_argument_count():
    assert commands.decode("fingerprint", []) is None
    assert commands.decode("update", [[]]) is None
    with pytest.raises(TypeError):
        commands.decode("hold", ["sha"])


def test_a_command_is_frozen():
    cmd = commands.Hold("sha", "o1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmd.node = "o2"  # type: ignore[misc]


def test_apply_answers_as_the_method_called_by_name():
    by_value, by_name = BuildQueue(), BuildQueue()
    items = [("a/b-1", "a/b-1", None)]
    for cmd in (commands.Submit("b1", "c", items, None, 1.0), commands.Delegate("a/b-1", "d1", 1, 2.0, 9.0),
                commands.Fail("a/b-1", "d1", 1, "boom", 3.0, 1, 3), commands.Unblock(None, 4.0)):
        assert by_value.apply(cmd) == getattr(by_name, cmd.NAME)(*cmd.args())
    assert by_value.fingerprint() == by_name.fingerprint()
