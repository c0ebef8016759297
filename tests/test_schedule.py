from __future__ import annotations

import pytest

from swarmmesh import schedule
from swarmmesh.schedule import Capacity, Lane, Running, Waiting

# a -> b -> c (c waits on b, b on a); d alone
EST = {"a": 10.0, "b": 5.0, "c": 100.0, "d": 50.0}
DEPENDANTS = {"a": ["b"], "b": ["c"], "c": [], "d": []}
DEPS = {"a": [], "b": ["a"], "c": ["b"], "d": []}


def test_rank_is_own_estimate_plus_the_longest_chain_waiting_on_it() -> None:
    ranks = schedule.ranks(EST, EST.__getitem__, DEPENDANTS.__getitem__, {})
    assert ranks == {"a": 115.0, "b": 105.0, "c": 100.0, "d": 50.0}


def test_rank_takes_the_longest_of_several_chains_and_known_ranks() -> None:
    dependants = {"root": ["x", "y"], "x": [], "y": []}
    ranks = schedule.ranks(["root"], lambda k: 1.0, dependants.__getitem__, {"x": 7.0, "y": 3.0})
    assert ranks == {"root": 8.0}


def test_a_chain_of_ten_thousand_needs_no_recursion() -> None:
    n = 10_000
    ranks = schedule.ranks(["p0"], lambda k: 1.0, lambda k: [f"p{int(k[1:]) + 1}"] if int(k[1:]) < n - 1 else [], {})
    assert ranks["p0"] == n


def test_raise_ranks_propagates_a_new_longer_chain_to_what_it_waits_on() -> None:
    ranks = {"a": 115.0, "b": 105.0, "c": 100.0, "d": 50.0, "e": 500.0}
    dependants = {**DEPENDANTS, "b": ["c", "e"], "e": []}
    raised = schedule.raise_ranks(["e"], ranks.__getitem__, {**EST, "e": 500.0}.__getitem__,
                                  {**DEPS, "e": ["b"]}.__getitem__, dependants.__getitem__)
    assert raised == {"b": 505.0, "a": 515.0}


def test_order_key_puts_the_longest_first_but_lets_old_work_through() -> None:
    long_now, short_now = schedule.order_key(100.0, 1000.0), schedule.order_key(100.0, 10.0)
    assert long_now < short_now
    assert schedule.order_key(100.0 + 2000.0, 1000.0) > short_now  # 2000 s later it cannot overtake


def test_estimate_of_applies_the_default_and_the_floor() -> None:
    assert schedule.estimate_of(None) == schedule.estimate_of(0) == schedule.DEFAULT_ESTIMATE
    assert schedule.estimate_of(1e-9) == schedule.MIN_ESTIMATE
    assert schedule.estimate_of(42) == 42.0


def lanes(*specs: tuple[str, float, int, float]) -> list[Lane]:
    return [Lane(name, speed, room, free_at) for name, speed, room, free_at in specs]


def test_place_gives_the_fastest_free_drone() -> None:
    assert schedule.place(100, lanes(("slow", 1.0, 1, 0), ("fast", 2.0, 1, 0)), now=0) == "fast"


def test_place_ties_equal_speeds_by_rank_then_name() -> None:
    pool = [Lane("a", 1.0, 1, rank=(1,)), Lane("b", 1.1, 2, rank=(2,))]
    assert schedule.place(10, pool, now=0) == "b"  # 1.0 and 1.1 are one speed class


def test_place_holds_a_long_build_for_a_faster_drone_that_frees_soon() -> None:
    pool = lanes(("slow", 1.0, 1, 0), ("fast", 2.0, 0, 105.0))
    assert schedule.place(1000, pool, now=100.0) is None      # 5 s wait + 500 s beats 1000 s
    assert schedule.place(4, pool, now=100.0) == "slow"        # 5 s + 2 s does not beat 4 s
    assert schedule.place(1000, pool, now=100.0 - 600) == "slow"  # fast frees in 605 s: go now


def test_place_avoids_drones_it_failed_on_while_others_have_room() -> None:
    pool = lanes(("fast", 2.0, 1, 0), ("slow", 1.0, 1, 0))
    assert schedule.place(10, pool, now=0, avoid=["fast"]) == "slow"
    assert schedule.place(10, pool[:1], now=0, avoid=["fast"]) == "fast"
    assert schedule.place(10, lanes(("x", 1.0, 0, 5.0)), now=0) is None


def test_forecast_replays_placement_with_dependencies() -> None:
    drones = [Capacity("slow", 1.0, 1), Capacity("fast", 2.0, 1)]
    running = [Running("r", "fast", ends_at=10.0)]
    waiting = [Waiting("long", 100.0), Waiting("dep", 10.0), Waiting("after", 10.0, deps=("dep",))]
    ends = schedule.forecast(running, waiting, drones, now=0.0)
    # long: slow ends at 100, fast at 10 + 50 = 60 -> fast; dep: slow 10; after: ready 10, slow 20
    assert ends == {"r": 10.0, "long": 60.0, "dep": 10.0, "after": 20.0}


def test_forecast_never_ends_a_running_build_in_the_past() -> None:
    ends = schedule.forecast([Running("late", "d", ends_at=5.0)], [Waiting("next", 4.0)], [Capacity("d", 1.0, 1)], 50.0)
    assert ends == {"late": 50.0, "next": 54.0}


def test_forecast_without_drones_forecasts_only_what_runs() -> None:
    assert schedule.forecast([], [Waiting("x", 1.0)], [], now=0.0) == {}


def test_merge_ends() -> None:
    assert schedule.merge_ends({"a": 1.0, "b": 3.0}, ["a", "b"]) == 3.0
    assert schedule.merge_ends({"a": 1.0}, ["a", "b"]) is None


@pytest.mark.parametrize(("work", "speeds", "bound"), [
    ([100.0, 1.0, 1.0], [1.0, 1.0, 2.0], 50.0),   # the long build on the fastest drone
    ([10.0] * 8, [1.0, 1.0, 2.0], 20.0),          # the total over the total speed
    ([], [1.0], 0.0),
])
def test_lower_bound(work: list[float], speeds: list[float], bound: float) -> None:
    assert schedule.lower_bound(work, speeds) == bound
