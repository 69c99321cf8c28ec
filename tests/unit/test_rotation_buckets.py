"""Bucket arithmetic and the subscription pattern of topic rotation (no broker)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steelcore.kafka.topic_rotation import (
    at_least_pattern,
    bucket_number,
    bucket_of,
    bucket_partitions,
    bucket_topic,
    is_closed,
    members_topic,
    subscription_pattern,
)


@given(st.integers(0, 10**12), st.integers(0, 10**12))
def test_the_at_least_pattern_matches_exactly_the_numbers_from_n_up(n: int, m: int) -> None:
    assert bool(re.fullmatch(at_least_pattern(n), str(m))) == (m >= n)


@pytest.mark.parametrize("n", [0, 9, 10, 99, 100, 5_984_321])
def test_the_at_least_pattern_at_digit_boundaries(n: int) -> None:
    pattern = at_least_pattern(n)
    for m in {max(0, n - 1), n, n + 1, 10 * n + 1, 10 ** len(str(n))}:
        assert bool(re.fullmatch(pattern, str(m))) == (m >= n), m
    assert not re.fullmatch(pattern, "0" + str(n + 1))  # leading zeros never name a bucket


def test_the_subscription_pattern_takes_only_buckets_of_its_topic() -> None:
    pattern = subscription_pattern("steel.frames", 120)
    assert pattern.startswith("^") and pattern.endswith("$")  # librdkafka: '^' marks a regex
    names = [
        "steel.frames.119", "steel.frames.120", "steel.frames.7000", "steel.frames",
        "steel.frames.truth.120", "steel.frames.dead-letter", "steelXframes.120", "steel.frames.120x",
    ]  # fmt: skip
    assert [n for n in names if re.fullmatch(pattern[1:-1], n)] == ["steel.frames.120", "steel.frames.7000"]
    with pytest.raises(ValueError, match="topic name"):
        subscription_pattern("steel frames", 1)


def test_the_membership_partitions_share_out_every_bucket_from_the_floor_up() -> None:
    topics = {
        "steel.frames.members": 2, "steel.frames.9": 4, "steel.frames.10": 4, "steel.frames.11": 3,
        "steel.frames.truth.10": 4, "steel.frames.dead-letter": 1,
    }  # fmt: skip
    assert bucket_number("steel.frames", members_topic("steel.frames")) is None  # never a bucket itself
    share = {m: bucket_partitions("steel.frames", topics, 10, {m}, 2) for m in (0, 1)}
    assert share[0] == [
        ("steel.frames.10", 0),
        ("steel.frames.10", 2),
        ("steel.frames.11", 0),
        ("steel.frames.11", 2),
    ]
    assert share[1] == [("steel.frames.10", 1), ("steel.frames.10", 3), ("steel.frames.11", 1)]
    # Together the members hold each partition from the floor up exactly once.
    every = [(name, p) for name in ("steel.frames.10", "steel.frames.11") for p in range(topics[name])]
    assert sorted(share[0] + share[1]) == sorted(every)
    assert bucket_partitions("steel.frames", topics, 10, {0, 1}, 2) == sorted(
        every, key=lambda x: (x[0], x[1])
    )
    assert bucket_partitions("steel.frames", topics, 12, {0, 1}, 2) == []
    with pytest.raises(ValueError):
        bucket_partitions("steel.frames", topics, 10, {0}, 0)


def test_bucket_names_round_trip_and_others_are_not_buckets() -> None:
    assert bucket_topic("steel.frames", 42) == "steel.frames.42"
    assert bucket_number("steel.frames", "steel.frames.42") == 42
    for other in ("steel.frames", "steel.frames.truth", "steel.frames.truth.42", "steel.frames.042", "x.42"):
        assert bucket_number("steel.frames", other) is None
    assert bucket_number("steel.frames.truth", "steel.frames.truth.42") == 42


def test_buckets_follow_the_clock_and_close_after_the_grace() -> None:
    assert bucket_of(1_000.0, 300) == 3 and bucket_of(1_199.999, 300) == 3 and bucket_of(1_200.0, 300) == 4
    assert not is_closed(3, 300, 30, now_s=1_229.9)
    assert is_closed(3, 300, 30, now_s=1_230.0)
    with pytest.raises(ValueError):
        bucket_of(1_000.0, 0)
