"""Assignment strategies as pure functions: each partition once, balanced, sticky as promised."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ConfigError, TopicPartition
from engine.assignor import (
    STRATEGIES,
    cooperative_sticky_assign,
    range_assign,
    roundrobin_assign,
    strategy,
)

TP = TopicPartition


def owners(assignment: dict[str, list[TopicPartition]]) -> dict[TopicPartition, str]:
    out: dict[TopicPartition, str] = {}
    for member, tps in assignment.items():
        for tp in tps:
            assert tp not in out, f"{tp} assigned twice"
            out[tp] = member
    return out


def test_range_gives_consecutive_blocks_first_members_one_more() -> None:
    subs = {"a": ["t"], "b": ["t"], "c": ["t"]}
    assert range_assign(subs, {"t": 7}) == {
        "a": [TP("t", 0), TP("t", 1), TP("t", 2)],
        "b": [TP("t", 3), TP("t", 4)],
        "c": [TP("t", 5), TP("t", 6)],
    }


def test_range_members_beyond_partition_count_stay_idle() -> None:
    subs = {f"m{i}": ["orders"] for i in range(4)}
    got = range_assign(subs, {"orders": 3})
    assert [len(got[m]) for m in sorted(got)] == [1, 1, 1, 0]


def test_roundrobin_deals_in_turn_across_topics() -> None:
    subs = {"a": ["x", "y"], "b": ["x", "y"]}
    assert roundrobin_assign(subs, {"x": 3, "y": 1}) == {
        "a": [TP("x", 0), TP("x", 2)],
        "b": [TP("x", 1), TP("y", 0)],
    }


def test_roundrobin_skips_members_not_subscribed() -> None:
    subs = {"a": ["x"], "b": ["y"]}
    got = roundrobin_assign(subs, {"x": 2, "y": 2})
    assert got == {"a": [TP("x", 0), TP("x", 1)], "b": [TP("y", 0), TP("y", 1)]}


def test_sticky_member_joining_takes_only_its_share() -> None:
    before = {"a": [TP("t", p) for p in range(0, 3)], "b": [TP("t", p) for p in range(3, 6)]}
    subs = {"a": ["t"], "b": ["t"], "c": ["t"]}
    after = cooperative_sticky_assign(subs, {"t": 6}, before)
    assert [len(after[m]) for m in "abc"] == [2, 2, 2]
    assert set(after["a"]) < set(before["a"]) and set(after["b"]) < set(before["b"])
    moved = [tp for tp, m in owners(after).items() if owners(before).get(tp) != m]
    assert len(moved) == 2  # exactly the new member's share


def test_sticky_member_leaving_moves_only_its_partitions() -> None:
    before = {
        "a": [TP("t", 0), TP("t", 1)],
        "b": [TP("t", 2), TP("t", 3)],
        "c": [TP("t", 4), TP("t", 5)],
    }
    after = cooperative_sticky_assign({"a": ["t"], "b": ["t"]}, {"t": 6}, before)
    assert set(before["a"]) <= set(after["a"]) and set(before["b"]) <= set(after["b"])
    assert sorted(after["a"] + after["b"]) == [TP("t", p) for p in range(6)]


def test_sticky_idle_member_takes_over_when_one_leaves() -> None:
    before = {"m1": [TP("o", 0)], "m2": [TP("o", 1)], "m3": [TP("o", 2)], "m4": []}
    subs = {"m1": ["o"], "m2": ["o"], "m4": ["o"]}
    after = cooperative_sticky_assign(subs, {"o": 3}, before)
    assert after == {"m1": [TP("o", 0)], "m2": [TP("o", 1)], "m4": [TP("o", 2)]}


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="cooperative-sticky"):
        strategy("sticky-ish")


@settings(max_examples=200, deadline=None)
@given(
    members=st.integers(1, 6),
    counts=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 9), min_size=1),
    seed=st.randoms(use_true_random=False),
    name=st.sampled_from(sorted(STRATEGIES)),
)
def test_every_partition_exactly_once_and_balanced(
    members: int, counts: dict[str, int], seed: object, name: str
) -> None:
    topics = sorted(counts)
    subs = {f"m{i}": topics for i in range(members)}
    every = sorted(TP(t, p) for t in topics for p in range(counts[t]))
    previous: dict[str, list[TopicPartition]] = {}
    for tp in every:  # a random earlier owner per partition (some gone), for the sticky one
        previous.setdefault(f"m{seed.randrange(members + 2)}", []).append(tp)  # type: ignore[attr-defined]
    got = STRATEGIES[name](subs, counts, previous)
    assert sorted(owners(got)) == every
    if name != "range":  # range balances per topic, not overall
        sizes = [len(v) for v in got.values()]
        assert max(sizes) - min(sizes) <= 1
    if name == "cooperative-sticky":  # a live member keeps min(share, what it had)
        share = len(every) // members
        for m in subs:
            kept = set(previous.get(m, [])) & set(got[m])
            assert len(kept) >= min(share, len(previous.get(m, [])))
