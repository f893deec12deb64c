"""The pub/sub layer's own slot map on a cluster, and the ``host:port`` node names it holds.

The subscribers follow a cluster with it: it is read from ``CLUSTER SLOTS`` when first needed,
asked which primary serves a name's slot, and corrected by each ``-MOVED`` a subscription
meets. A wrong answer subscribes a name on a node that never delivers its messages, so what
a lookup returns after each of these is pinned down here.
"""

from __future__ import annotations

from typing import Any

import pytest

from channels_valkey._common.cluster_lanes import split_name
from channels_valkey._common.cluster_routing import node_name
from channels_valkey._pubsub.cluster import SlotMap

#: ``CLUSTER SLOTS`` as valkey-py returns it: ``[start, end, primary, replicas...]``, each node
#: ``[host, port, id, ...]``, listed in no particular order.
REPLY: list[Any] = [
    [10923, 16383, [b"10.0.0.3", 7002, b"id3"], [b"10.0.0.6", 7005, b"id6"]],
    [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
    [5461, 10922, [b"10.0.0.2", 7001, b"id2"], [b"10.0.0.5", 7004, b"id5"]],
]


@pytest.mark.parametrize(
    ("host", "port"), [("127.0.0.1", 7000), ("localhost", 6379), ("::1", 7001), ("fe80::2", 1)]
)
def test_a_node_name_splits_back_into_its_host_and_port(host: str, port: int) -> None:
    """Names key subscribers and are split again to connect; an IPv6 host keeps its colons."""
    name = node_name(host, port)
    assert name == f"{host}:{port}"
    assert split_name(name) == (host, port)


def test_an_empty_map_knows_no_owner() -> None:
    """Before the first read: empty, so the placement knows it has to read one."""
    slots = SlotMap()
    assert not slots
    assert len(slots) == 0
    assert list(slots) == []
    assert slots.owner(0) is None
    assert slots.primaries() == []


def test_each_slot_is_served_by_the_primary_of_its_range() -> None:
    slots = SlotMap.from_reply(REPLY, "10.0.0.1:7000")
    assert len(slots) == 3
    assert slots.owner(0) == "10.0.0.1:7000"
    assert slots.owner(5460) == "10.0.0.1:7000"
    assert slots.owner(5461) == "10.0.0.2:7001"
    assert slots.owner(10922) == "10.0.0.2:7001"
    assert slots.owner(10923) == "10.0.0.3:7002"
    assert slots.owner(16383) == "10.0.0.3:7002"


def test_ranges_are_kept_in_slot_order_and_replicas_are_not_owners() -> None:
    slots = SlotMap.from_reply(REPLY, "10.0.0.1:7000")
    assert list(slots) == [
        (0, 5460, "10.0.0.1:7000"),
        (5461, 10922, "10.0.0.2:7001"),
        (10923, 16383, "10.0.0.3:7002"),
    ]
    assert slots.primaries() == ["10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"]


def test_a_slot_no_range_covers_has_no_owner() -> None:
    """A cluster with unassigned slots (being set up, or a failed primary without replica)."""
    slots = SlotMap([(100, 199, "a:1"), (300, 399, "b:2")])
    assert slots.owner(99) is None
    assert slots.owner(200) is None
    assert slots.owner(299) is None
    assert slots.owner(400) is None
    assert slots.owner(100) == "a:1"
    assert slots.owner(399) == "b:2"


@pytest.mark.parametrize("announced", [b"", "", b"?", "?"])
def test_a_primary_announced_without_a_host_is_on_the_node_that_answered(
    announced: bytes | str,
) -> None:
    """Valkey leaves the host out (or sends ``?``) when the node does not know its own
    address; the node that answered is then the one to connect to, on the port given."""
    reply = [[0, 16383, [announced, 7000, b"id"]]]
    assert SlotMap.from_reply(reply, "10.0.0.9:7000").owner(42) == "10.0.0.9:7000"
    assert SlotMap.from_reply(reply, "::1:7003").owner(42) == "::1:7000"


def test_hosts_given_as_text_are_read_as_they_are() -> None:
    """A client decoding replies hands over ``str`` hosts instead of ``bytes``."""
    reply = [[0, 16383, ["node-a", 7000, "id"]]]
    assert SlotMap.from_reply(reply, "x:1").owner(0) == "node-a:7000"


def test_a_moved_slot_is_served_by_the_node_named_and_its_neighbours_stay() -> None:
    slots = SlotMap([(0, 99, "a:1"), (100, 199, "b:2")])
    moved = slots.moved(50, "c:3")
    assert moved.owner(50) == "c:3"
    assert moved.owner(49) == "a:1"
    assert moved.owner(51) == "a:1"
    assert moved.owner(0) == "a:1"
    assert moved.owner(99) == "a:1"
    assert moved.owner(100) == "b:2"
    assert list(moved) == [(0, 49, "a:1"), (50, 50, "c:3"), (51, 99, "a:1"), (100, 199, "b:2")]
    assert moved.primaries() == ["a:1", "c:3", "b:2"]


def test_moving_leaves_the_map_it_was_learnt_from_unchanged() -> None:
    """``moved`` returns a copy: a lookup already running on the old map is not disturbed."""
    slots = SlotMap([(0, 99, "a:1")])
    slots.moved(10, "b:2")
    assert list(slots) == [(0, 99, "a:1")]
    assert slots.owner(10) == "a:1"


@pytest.mark.parametrize(("slot", "rest"), [(0, [(1, 99, "a:1")]), (99, [(0, 98, "a:1")])])
def test_a_moved_slot_at_the_edge_of_a_range_leaves_no_empty_range(
    slot: int, rest: list[tuple[int, int, str]]
) -> None:
    moved = SlotMap([(0, 99, "a:1")]).moved(slot, "b:2")
    assert sorted([*rest, (slot, slot, "b:2")]) == list(moved)
    assert moved.owner(slot) == "b:2"


def test_a_range_of_one_slot_moves_whole() -> None:
    moved = SlotMap([(0, 9, "a:1"), (10, 10, "b:2"), (11, 20, "a:1")]).moved(10, "c:3")
    assert list(moved) == [(0, 9, "a:1"), (10, 10, "c:3"), (11, 20, "a:1")]
    assert moved.primaries() == ["a:1", "c:3"]


def test_a_moved_slot_no_range_covered_is_learnt() -> None:
    """A ``-MOVED`` for a slot the map did not know (read while it was unassigned)."""
    moved = SlotMap([(0, 99, "a:1")]).moved(500, "b:2")
    assert moved.owner(500) == "b:2"
    assert moved.owner(501) is None
    assert moved.owner(99) == "a:1"


def test_moves_add_up() -> None:
    """Several ``-MOVED`` during a resharding: each is kept, the latest wins for its slot."""
    slots = SlotMap([(0, 99, "a:1")])
    for slot in (10, 11, 12):
        slots = slots.moved(slot, "b:2")
    slots = slots.moved(11, "c:3")
    assert [slots.owner(slot) for slot in (9, 10, 11, 12, 13)] == [
        "a:1",
        "b:2",
        "c:3",
        "b:2",
        "a:1",
    ]
    assert sum(end - start + 1 for start, end, _ in slots) == 100
