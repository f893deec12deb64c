"""The core layer's Lua scripts (``lua/``), loaded once per process and called by SHA, and
the one place that lays out their arguments and reads their replies.

Each script's contract (keys, arguments, reply) is at the top of its ``.lua`` file; the
functions here follow it, so a one-server shard and a cluster build the same calls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from channels_valkey._common.scripts import Arg, Script

SEND = Script.load(__package__, "send")
SEND_MANY = Script.load(__package__, "send_many")
SEND_BATCH = Script.load(__package__, "send_batch")
GROUP_ADD = Script.load(__package__, "group_add")
REQUEUE = Script.load(__package__, "requeue")
WAKE = Script.load(__package__, "wake")
ALIVE = Script.load(__package__, "alive")


def send_args(now: float, expiry: int, capacity: int, payload: bytes) -> list[Arg]:
    """``send.lua``'s arguments: one payload for one queue."""
    return [repr(now), expiry, capacity, payload]


def send_many_args(
    now: float, expiry: int, deliveries: Sequence[tuple[str, int, bytes]]
) -> list[Arg]:
    """``send_many.lua``'s arguments for ``(queue, capacity, payload)`` deliveries (its keys
    are their queues, in the same order)."""
    args: list[Arg] = [repr(now), expiry]
    for _, capacity, payload in deliveries:
        args += [capacity, payload]
    return args


#: One queue of a batch send: ``(queue, capacity, payloads)``, where ``payloads`` is the
#: queue's own copy of the messages, or ``None`` for the copies every queue shares.
BatchWrite = tuple[str, int, Sequence[bytes] | None]


def batch_args(
    writes: Sequence[BatchWrite],
    scores: Sequence[float],
    shared: Sequence[bytes],
    now: float,
    expiry: int,
) -> list[Arg]:
    """``send_batch.lua``'s arguments for ``writes`` (its keys are their queues): the shared
    payloads travel once, however many queues take them."""
    args: list[Arg] = [repr(now), expiry, len(scores)]
    args += [repr(score) for score in scores]
    args += shared
    for _, capacity, own in writes:
        if own is None:
            args += [capacity, 0]
        else:
            args += [capacity, 1, *own]
    return args


def group_add_args(channel: str, group_expiry: int) -> list[Arg]:
    """``group_add.lua``'s arguments: the member joins now, by this process's clock."""
    return [repr(time.time()), group_expiry, channel]


def requeue_args(expiry: int, items: Sequence[tuple[float, bytes]]) -> list[Arg]:
    """``requeue.lua``'s arguments: messages put back with their original scores."""
    args: list[Arg] = [expiry]
    for score, payload in items:
        args += [repr(score), payload]
    return args


def alive_args(process: str, expiry: float, keep: int, known: tuple[int, str]) -> list[Arg]:
    """``alive.lua``'s arguments (see :class:`AliveReply` for ``known``)."""
    return [process, repr(expiry), keep, known[0], known[1]]


@dataclass(frozen=True)
class AliveReply:
    """What ``lua/alive.lua`` tells (see there)."""

    #: Seconds since the caller's previous heartbeat; ``None`` if it had none (or only read).
    silent: float | None
    #: How many registered processes are dead, and the latest deadline among them: what the
    #: caller passes back next time, so the ids travel only when they changed.
    known: tuple[int, str]
    #: The dead processes' ids; ``None`` when they are those the caller knew.
    dead: list[str] | None


def parse_alive(reply: object) -> AliveReply:
    silent, count, newest, changed, dead = cast("tuple[bytes, int, bytes, int, list[bytes]]", reply)
    return AliveReply(
        float(silent) if silent else None,
        (int(count), newest.decode("ascii")),
        [process.decode("utf8") for process in dead] if changed else None,
    )
