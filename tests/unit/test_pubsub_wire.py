"""Commands and replies of a subscribed connection, as data: no server involved."""

from __future__ import annotations

import asyncio

import pytest
from valkey.exceptions import ResponseError

from channels_valkey._pubsub_wire import (
    MAX_NAMES_PER_COMMAND,
    PING,
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


async def test_an_error_reply_fails_the_whole_command() -> None:
    loop = asyncio.get_running_loop()
    a, b, c = loop.create_future(), loop.create_future(), loop.create_future()
    tracker = ReplyTracker()
    for command in batch([Op(SUBSCRIBE, "a", a), Op(SUBSCRIBE, "b", b), Op(PING, done=c)]):
        tracker.sent(command)
    error = ResponseError("NOPERM no permissions to access one of the channels")
    failed = tracker.refused(error)
    assert [op.name for op in failed] == ["a", "b"]
    assert a.exception() is error
    assert b.exception() is error
    tracker.answered(Answer(PING, ""))
    assert c.done()
    assert c.exception() is None
