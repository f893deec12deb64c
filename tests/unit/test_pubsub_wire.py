"""Commands and replies of a subscribed connection, as data: no server involved."""

from __future__ import annotations

import asyncio

import pytest
from valkey.exceptions import ResponseError

from channels_valkey._pubsub.wire import (
    MAX_NAMES_PER_COMMAND,
    PING,
    PLAIN,
    SHARDED,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Answer,
    Op,
    ProtocolMismatch,
    Pushed,
    ReplyTracker,
    batch,
    parse_reply,
)


def test_batch_groups_runs_of_one_kind_in_order() -> None:
    ops = [
        Op(SUBSCRIBE, "a"),
        Op(SUBSCRIBE, "b"),
        Op(UNSUBSCRIBE, "a"),
        Op(SUBSCRIBE, "a"),
        Op(PING),
        Op(PING),
    ]
    commands = batch(ops)
    assert [(c.kind, c.args) for c in commands] == [
        (SUBSCRIBE, ["a", "b"]),
        (UNSUBSCRIBE, ["a"]),
        (SUBSCRIBE, ["a"]),
        (PING, []),
        (PING, []),
    ]


def test_batch_splits_long_runs() -> None:
    ops = [Op(SUBSCRIBE, str(n)) for n in range(MAX_NAMES_PER_COMMAND + 1)]
    assert [len(c.ops) for c in batch(ops)] == [MAX_NAMES_PER_COMMAND, 1]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([b"message", b"chan", b"\x00data"], Pushed("chan", b"\x00data")),
        ([b"subscribe", b"chan", 1], Answer(SUBSCRIBE, "chan")),
        ([b"unsubscribe", b"chan", 0], Answer(UNSUBSCRIBE, "chan")),
        ([b"pong", b""], Answer(PING, "")),
        (b"PONG", Answer(PING, "")),
        ([b"pmessage", b"p*", b"chan", b"x"], None),
        (b"OK", None),
        (None, None),
    ],
)
def test_parse_reply(reply: object, expected: object) -> None:
    assert parse_reply(reply) == expected


async def test_tracker_confirms_each_name_in_order() -> None:
    loop = asyncio.get_running_loop()
    first, again = loop.create_future(), loop.create_future()
    tracker = ReplyTracker()
    # SUBSCRIBE a, UNSUBSCRIBE a, SUBSCRIBE a: the first confirmation is not the last one's.
    ops = [Op(SUBSCRIBE, "a", first), Op(UNSUBSCRIBE, "a"), Op(SUBSCRIBE, "a", again)]
    for command in batch(ops):
        tracker.sent(command)
    tracker.answered(Answer(SUBSCRIBE, "a"))
    assert first.done()
    assert not again.done()
    tracker.answered(Answer(UNSUBSCRIBE, "a"))
    tracker.answered(Answer(SUBSCRIBE, "a"))
    assert again.done()
    assert len(tracker) == 0


async def test_tracker_refuses_replies_that_fit_no_command() -> None:
    tracker = ReplyTracker()
    with pytest.raises(ProtocolMismatch):
        tracker.answered(Answer(SUBSCRIBE, "a"))
    tracker.sent(batch([Op(SUBSCRIBE, "a")])[0])
    with pytest.raises(ProtocolMismatch, match="while waiting for SUBSCRIBE 'a'"):
        tracker.answered(Answer(SUBSCRIBE, "b"))


async def test_an_error_reply_answers_the_whole_command() -> None:
    """The caller settles the refused ops (fails them, or sends them elsewhere)."""
    loop = asyncio.get_running_loop()
    a, b, c = loop.create_future(), loop.create_future(), loop.create_future()
    tracker = ReplyTracker()
    for command in batch([Op(SUBSCRIBE, "a", a), Op(SUBSCRIBE, "b", b), Op(PING, done=c)]):
        tracker.sent(command)
    error = ResponseError("NOPERM no permissions to access one of the channels")
    refused = tracker.refused(error)
    assert [op.name for op in refused] == ["a", "b"]
    assert [op.done for op in refused] == [a, b]
    assert not a.done()
    assert not b.done()
    tracker.answered(Answer(PING, ""))
    assert c.done()
    assert c.exception() is None
    with pytest.raises(ProtocolMismatch, match="unexpected error reply"):
        tracker.refused(error)


# --- sharded pub/sub (Valkey Cluster) ----------------------------------------------------------


def slot_of(name: str) -> int:
    """A stand-in for the hash slot: the first letter."""
    return ord(name[0])


def test_sharded_commands_hold_names_of_one_slot() -> None:
    ops = [
        Op(SUBSCRIBE, "a1"),
        Op(SUBSCRIBE, "a2"),
        Op(SUBSCRIBE, "b1"),
        Op(SUBSCRIBE, "a3"),
        Op(UNSUBSCRIBE, "a1"),
        Op(PING),
    ]
    commands = batch(ops, slot_of)
    assert [(c.kind, c.slot, c.args) for c in commands] == [
        (SUBSCRIBE, ord("a"), ["a1", "a2"]),
        (SUBSCRIBE, ord("b"), ["b1"]),
        (SUBSCRIBE, ord("a"), ["a3"]),
        (UNSUBSCRIBE, ord("a"), ["a1"]),
        (PING, None, []),
    ]
    assert [SHARDED.command(c.kind) for c in commands] == [
        "SSUBSCRIBE",
        "SSUBSCRIBE",
        "SSUBSCRIBE",
        "SUNSUBSCRIBE",
        "PING",
    ]
    assert [PLAIN.command(c.kind) for c in commands[2:]] == ["SUBSCRIBE", "UNSUBSCRIBE", "PING"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([b"smessage", b"chan", b"\x00data"], Pushed("chan", b"\x00data")),
        ([b"ssubscribe", b"chan", 1], Answer(SUBSCRIBE, "chan")),
        ([b"sunsubscribe", b"chan", 0], Answer(UNSUBSCRIBE, "chan")),
    ],
)
def test_parse_sharded_replies(reply: object, expected: object) -> None:
    assert parse_reply(reply) == expected


def test_an_unsubscribe_push_is_told_apart_from_the_answer_awaited() -> None:
    tracker = ReplyTracker()
    for command in batch([Op(SUBSCRIBE, "a1"), Op(UNSUBSCRIBE, "b1")], slot_of):
        tracker.sent(command)
    # The server dropped b1 and a2 (their slots moved): neither is the oldest op's answer.
    assert not tracker.expects(Answer(UNSUBSCRIBE, "a2"))
    assert not tracker.expects(Answer(UNSUBSCRIBE, "b1"))
    assert tracker.expects(Answer(SUBSCRIBE, "a1"))
    tracker.answered(Answer(SUBSCRIBE, "a1"))
    # Now the push for b1 is taken for the answer to our SUNSUBSCRIBE b1...
    assert tracker.expects(Answer(UNSUBSCRIBE, "b1"))
    tracker.answered(Answer(UNSUBSCRIBE, "b1"))
    # ...so the real answer, a -MOVED for b's slot, matches nothing in flight: skipped.
    assert not tracker.expects_error(ord("b"))
    assert len(tracker) == 0


def test_an_error_about_another_slot_is_not_the_oldest_commands() -> None:
    tracker = ReplyTracker()
    for command in batch([Op(SUBSCRIBE, "a1"), Op(PING)], slot_of):
        tracker.sent(command)
    assert tracker.expects_error(ord("a"))
    assert not tracker.expects_error(ord("b"))
    assert tracker.expects_error(None)  # any other error is the oldest command's
