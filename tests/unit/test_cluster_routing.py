"""Planning a cluster operation: calls grouped by primary, what each reply asks for, and
which calls the next round sends."""

from __future__ import annotations

from valkey.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

from channels_valkey._common.cluster_routing import (
    ASKING,
    Call,
    Progress,
    Route,
    Step,
    commands_of,
    positions_by,
    redirect_target,
    replies_of,
    step,
)
from channels_valkey._queue import scripts

# valkey-py declares no types on its exceptions' constructors, hence the ignores below.
OWNERS = {1: "a:1", 2: "b:2", 3: "a:1"}


def calls(*slots: int) -> list[Call]:
    return [Call(slot, ("GET", f"key{position}")) for position, slot in enumerate(slots)]


def test_calls_are_grouped_by_the_primary_of_their_slot_in_order() -> None:
    progress = Progress(calls(1, 2, 3, 2))
    routes = progress.plan(OWNERS.get)
    assert routes == [Route("a:1", False, [0, 2]), Route("b:2", False, [1, 3])]
    assert progress.trouble is None


def test_replies_are_kept_in_the_calls_order() -> None:
    progress = Progress(calls(1, 2, 3))
    first, second = progress.plan(OWNERS.get)
    progress.answered(second, [b"b"])
    progress.answered(first, [b"a", ResponseError("WRONGTYPE")])
    assert progress.finished
    assert progress.results[:2] == [b"a", b"b"]
    assert isinstance(progress.results[2], ResponseError)  # the command's own error, kept


def test_a_moved_call_is_sent_again_to_the_owner_learnt() -> None:
    progress = Progress(calls(1, 2))
    first, second = progress.plan(OWNERS.get)
    moved = MovedError("1 b:2")  # type: ignore[no-untyped-call]
    progress.answered(first, [moved])
    progress.answered(second, [b"b"])
    assert progress.moved == [(moved, "a:1")]
    assert not progress.finished
    assert progress.trouble is None  # no pause: at once
    owners = {**OWNERS, 1: "b:2"}
    assert progress.plan(owners.get) == [Route("b:2", False, [0])]


def test_an_asked_call_goes_to_the_named_node_after_asking_once() -> None:
    ops = calls(1, 1)
    progress = Progress(ops)
    (route,) = progress.plan(OWNERS.get)
    progress.answered(route, [b"a", AskError("1 c:3")])  # type: ignore[no-untyped-call]
    routes = progress.plan(OWNERS.get)
    assert routes == [Route("c:3", True, [1])]
    assert commands_of(routes[0], ops) == [ASKING, ("GET", "key1")]
    assert commands_of(route, ops) == [("GET", "key0"), ("GET", "key1")]
    # Asked once: then the map again.
    progress.answered(routes[0], [MovedError("1 b:2")])  # type: ignore[no-untyped-call]
    assert progress.plan(OWNERS.get) == [Route("a:1", False, [1])]


def test_noscript_asks_for_the_script_on_that_node() -> None:
    progress = Progress([Call(1, ("EVALSHA", "x", 0), scripts.SEND), Call(2, ("GET", "k"))])
    first, second = progress.plan(OWNERS.get)
    progress.answered(first, [NoScriptError("No matching script")])
    progress.answered(second, [b"v"])
    assert progress.scripts == {"a:1": {scripts.SEND}}
    assert progress.todo == [0]
    assert progress.trouble is None


def test_a_failed_write_is_sent_again_and_is_trouble_unless_said_otherwise() -> None:
    progress = Progress(calls(1, 2))
    first, second = progress.plan(OWNERS.get)
    progress.failed(first, None)  # its node left the map: no pause
    progress.answered(second, [TryAgainError("rehashing")])  # type: ignore[no-untyped-call]
    assert sorted(progress.todo) == [0, 1]
    assert isinstance(progress.trouble, TryAgainError)
    progress.plan(OWNERS.get)
    progress.failed(Route("a:1", False, [0]), ConnectionError("refused"))
    assert isinstance(progress.trouble, ConnectionError)


def test_slots_no_node_serves_stay_to_do_and_are_trouble() -> None:
    progress = Progress(calls(1, 9))
    assert progress.plan(OWNERS.get) == [Route("a:1", False, [0])]
    assert progress.todo == [1]
    assert isinstance(progress.trouble, LookupError)


def test_the_replies_to_asking_are_left_out() -> None:
    asking = Route("c:3", True, [0, 1])
    assert list(replies_of(asking, [b"OK", b"one", b"OK", b"two"])) == [b"one", b"two"]
    assert list(replies_of(Route("a:1", False, [0]), [b"one"])) == [b"one"]


def test_what_each_reply_asks_for() -> None:
    assert step(b"reply") is Step.DONE
    assert step(ResponseError("WRONGTYPE")) is Step.DONE  # the command's own error
    assert step(MovedError("3999 127.0.0.1:6381")) is Step.MOVED  # type: ignore[no-untyped-call]
    assert step(AskError("3999 127.0.0.1:6381")) is Step.ASK  # type: ignore[no-untyped-call]
    assert step(NoScriptError("No matching script")) is Step.NOSCRIPT
    assert step(TryAgainError("Multiple keys request during rehashing")) is Step.WAIT  # type: ignore[no-untyped-call]
    assert step(ClusterDownError("The cluster is down")) is Step.WAIT  # type: ignore[no-untyped-call]


def test_a_redirection_without_a_host_names_the_host_that_answered() -> None:
    assert redirect_target(MovedError("3999 10.0.0.2:6381"), "127.0.0.1:7000") == "10.0.0.2:6381"  # type: ignore[no-untyped-call]
    assert redirect_target(MovedError("3999 :6381"), "127.0.0.1:7000") == "127.0.0.1:6381"  # type: ignore[no-untyped-call]


def test_positions_are_grouped_by_key_in_first_seen_order() -> None:
    assert positions_by([5, 3, 5, 7, 3]) == {5: [0, 2], 3: [1, 4], 7: [3]}


def test_a_script_call_is_its_evalsha() -> None:
    command = scripts.SEND.command(["q"], ["1.0", 60, 100, b"x"])
    assert command == ("EVALSHA", scripts.SEND.sha, 1, "q", "1.0", 60, 100, b"x")
