"""Planning a cluster operation: calls grouped by primary, and what each reply asks for."""

from __future__ import annotations

from valkey.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

from channels_valkey import _scripts
from channels_valkey._cluster_routing import (
    ASKING,
    Call,
    Route,
    Step,
    commands_of,
    plan,
    positions_by,
    redirect_target,
    replies_of,
    step,
)

OWNERS = {1: "a:1", 2: "b:2", 3: "a:1"}


def calls(*slots: int) -> list[Call]:
    return [Call(slot, ("GET", f"key{position}")) for position, slot in enumerate(slots)]


def test_calls_are_grouped_by_the_primary_of_their_slot_in_order() -> None:
    ops = calls(1, 2, 3, 2)
    routes, unrouted = plan(range(4), ops, {}, OWNERS.get)
    assert routes == [Route("a:1", False, [0, 2]), Route("b:2", False, [1, 3])]
    assert unrouted == []


def test_only_the_calls_to_do_are_planned() -> None:
    routes, _ = plan([1, 2], calls(1, 2, 3), {}, OWNERS.get)
    assert routes == [Route("b:2", False, [1]), Route("a:1", False, [2])]


def test_a_call_an_ask_redirected_goes_to_the_named_node_after_asking() -> None:
    ops = calls(1, 1)
    routes, _ = plan(range(2), ops, {1: "c:3"}, OWNERS.get)
    assert routes == [Route("a:1", False, [0]), Route("c:3", True, [1])]
    assert commands_of(routes[1], ops) == [ASKING, ("GET", "key1")]
    assert commands_of(routes[0], ops) == [("GET", "key0")]


def test_the_replies_to_asking_are_left_out() -> None:
    asking = Route("c:3", True, [0, 1])
    assert list(replies_of(asking, [b"OK", b"one", b"OK", b"two"])) == [b"one", b"two"]
    assert list(replies_of(Route("a:1", False, [0]), [b"one"])) == [b"one"]


def test_slots_no_node_serves_are_reported() -> None:
    routes, unrouted = plan(range(2), calls(1, 9), {}, OWNERS.get)
    assert routes == [Route("a:1", False, [0])]
    assert unrouted == [1]


def test_what_each_reply_asks_for() -> None:
    assert step(b"reply") is Step.DONE
    assert step(ResponseError("WRONGTYPE")) is Step.DONE  # the command's own error
    assert step(MovedError("3999 127.0.0.1:6381")) is Step.MOVED
    assert step(AskError("3999 127.0.0.1:6381")) is Step.ASK
    assert step(NoScriptError("No matching script")) is Step.NOSCRIPT
    assert step(TryAgainError("Multiple keys request during rehashing")) is Step.WAIT
    assert step(ClusterDownError("The cluster is down")) is Step.WAIT


def test_a_redirection_without_a_host_names_the_host_that_answered() -> None:
    assert redirect_target(MovedError("3999 10.0.0.2:6381"), "127.0.0.1:7000") == "10.0.0.2:6381"
    assert redirect_target(MovedError("3999 :6381"), "127.0.0.1:7000") == "127.0.0.1:6381"


def test_positions_are_grouped_by_key_in_first_seen_order() -> None:
    assert positions_by([5, 3, 5, 7, 3]) == {5: [0, 2], 3: [1, 4], 7: [3]}


def test_a_script_call_is_its_evalsha() -> None:
    command = _scripts.SEND.command(["q"], ["1.0", 60, 100, b"x"])
    assert command == ("EVALSHA", _scripts.SEND.sha, 1, "q", "1.0", 60, 100, b"x")
