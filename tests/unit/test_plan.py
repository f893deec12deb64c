"""Unit tests for group-send planning: which queue writes go to which shard."""

from __future__ import annotations

import fnmatch
import itertools

import pytest

from channels_valkey._common.sharding import shard_index
from channels_valkey._queue.keys import KeySpace, non_local_name
from channels_valkey._queue.plan import QueueWrite, batch_scores, plan_group_send

KEYS = KeySpace("asgi")

P1 = "specific.aaaaaaaa!"
P2 = "specific.bbbbbbbb!"

RULES = [(f"{P1}*", 3), (f"{P2}*", 7), ("chat.*", 5)]


def capacity_of(channel: str) -> int:
    for pattern, capacity in RULES:
        if fnmatch.fnmatchcase(channel, pattern):
            return capacity
    return 100


def all_writes(plan: dict[int, list[QueueWrite]]) -> list[QueueWrite]:
    return [write for writes in plan.values() for write in writes]


def by_queue(plan: dict[int, list[QueueWrite]]) -> dict[str, QueueWrite]:
    writes = all_writes(plan)
    queues = {write.queue: write for write in writes}
    assert len(queues) == len(writes), "a queue was written more than once"
    return queues


def test_empty_group_plans_nothing() -> None:
    assert plan_group_send([], KEYS, 3, capacity_of) == {}


def test_local_channels_of_one_process_share_one_write() -> None:
    members = [f"{P1}one", f"{P1}two", f"{P1}three"]
    plan = plan_group_send(members, KEYS, 1, capacity_of)
    assert plan == {0: [QueueWrite("asgi" + P1, 3, tuple(members))]}


def test_each_process_gets_one_write_listing_its_channels() -> None:
    members = [f"{P1}a", f"{P2}x", f"{P1}b", f"{P2}y", f"{P2}z"]
    queues = by_queue(plan_group_send(members, KEYS, 1, capacity_of))
    assert set(queues) == {"asgi" + P1, "asgi" + P2}
    assert queues["asgi" + P1].local_channels == (f"{P1}a", f"{P1}b")
    assert queues["asgi" + P2].local_channels == (f"{P2}x", f"{P2}y", f"{P2}z")


def test_normal_channels_get_one_write_each() -> None:
    members = ["chat.one", "chat.two", "other"]
    queues = by_queue(plan_group_send(members, KEYS, 1, capacity_of))
    assert queues == {
        "asgi" + "chat.one": QueueWrite("asgichat.one", 5, ()),
        "asgi" + "chat.two": QueueWrite("asgichat.two", 5, ()),
        "asgi" + "other": QueueWrite("asgiother", 100, ()),
    }


def test_duplicates_are_removed() -> None:
    members = ["chat.one", f"{P1}a", "chat.one", f"{P1}a", f"{P1}b", "chat.one"]
    queues = by_queue(plan_group_send(members, KEYS, 1, capacity_of))
    assert len(queues) == 2
    assert queues["asgichat.one"].local_channels == ()
    assert queues["asgi" + P1].local_channels == (f"{P1}a", f"{P1}b")


def test_members_may_be_any_iterable() -> None:
    members = iter(["chat.one", f"{P1}a"])
    assert len(all_writes(plan_group_send(members, KEYS, 2, capacity_of))) == 2


def test_queue_keys_use_the_prefix() -> None:
    keys = KeySpace("myapp:")
    queues = by_queue(plan_group_send(["chat.one", f"{P1}a"], keys, 1, capacity_of))
    assert set(queues) == {"myapp:chat.one", "myapp:" + P1}


@pytest.mark.parametrize("ring_size", [1, 2, 3, 5, 7])
def test_shard_of_each_write_is_shard_index_of_its_non_local_name(ring_size: int) -> None:
    members = [f"chat.{i}" for i in range(40)]
    members += [f"specific.{p:08x}!{c}" for p in range(25) for c in ("a", "b")]
    plan = plan_group_send(members, KEYS, ring_size, capacity_of)
    assert set(plan) <= set(range(ring_size))
    for index, writes in plan.items():
        for write in writes:
            channels = write.local_channels or (write.queue.removeprefix("asgi"),)
            for channel in channels:
                assert index == shard_index(non_local_name(channel), ring_size), channel
    # Every member is covered exactly once.
    covered = [
        channel
        for write in all_writes(plan)
        for channel in (write.local_channels or (write.queue.removeprefix("asgi"),))
    ]
    assert sorted(covered) == sorted(members)


def test_local_shard_is_not_derived_from_the_full_channel_name() -> None:
    # With enough processes, some full names hash to another shard than their queue's name.
    ring_size = 7
    members = [f"specific.{p:08x}!suffix{p}" for p in range(60)]
    assert any(
        shard_index(m, ring_size) != shard_index(non_local_name(m), ring_size) for m in members
    )
    plan = plan_group_send(members, KEYS, ring_size, capacity_of)
    for index, writes in plan.items():
        for write in writes:
            assert index == shard_index(write.queue.removeprefix("asgi"), ring_size)


def test_capacity_comes_from_capacity_of() -> None:
    calls: list[str] = []

    def recording(channel: str) -> int:
        calls.append(channel)
        return capacity_of(channel)

    members = ["chat.one", "lobby", f"{P1}a", f"{P2}b"]
    queues = by_queue(plan_group_send(members, KEYS, 1, recording))
    assert {q: w.capacity for q, w in queues.items()} == {
        "asgichat.one": 5,
        "asgilobby": 100,
        "asgi" + P1: 3,
        "asgi" + P2: 7,
    }
    # Asked with member names (as send() does), not with queue keys.
    assert set(calls) <= set(members)


def test_local_queue_capacity_is_that_of_its_first_member_like_channels_redis() -> None:
    def per_channel(channel: str) -> int:
        return {f"{P1}a": 11, f"{P1}b": 22}[channel]

    (write,) = all_writes(plan_group_send([f"{P1}a", f"{P1}b"], KEYS, 1, per_channel))
    assert write.capacity == 11


def test_writes_keep_member_order_within_a_shard() -> None:
    members = ["c", "a", "b"]
    (writes,) = plan_group_send(members, KEYS, 1, capacity_of).values()
    assert [w.queue for w in writes] == ["asgic", "asgia", "asgib"]


@pytest.mark.parametrize("now", [0.0, 1.5, 1_800_000_000.123456, 4_102_444_800.0])
def test_batch_scores_increase_from_now_and_stay_close(now: float) -> None:
    scores = batch_scores(now, 1000)
    assert scores[0] == now
    assert all(a < b for a, b in itertools.pairwise(scores))
    # A thousand messages span well under a millisecond of the clock, even in 2100.
    assert scores[-1] - now < 0.001


def test_batch_scores_of_one_message_is_now() -> None:
    assert batch_scores(12.5, 1) == [12.5]
