"""Group-send planning: from member names to per-shard batches of queue writes. Pure.

Members that are process-local channels of one process share that process's queue, so they
get one message between them that lists their names under ``__asgi_channel__`` (the
receiving process hands a copy to each). Members that are normal channels each get the
message in their own queue.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from channels_valkey._common.sharding import shard_index

from .keys import KeySpace, is_process_local, non_local_name


@dataclass(frozen=True)
class QueueWrite:
    """One message to put on one queue."""

    queue: str
    capacity: int
    #: The process-local channels that share ``queue``; empty for a normal channel.
    local_channels: tuple[str, ...]


def plan_group_send(
    members: Iterable[str],
    keys: KeySpace,
    ring_size: int,
    capacity_of: Callable[[str], int],
) -> dict[int, list[QueueWrite]]:
    """Map shard index to the queue writes it gets, each queue once."""
    local: dict[str, list[str]] = {}
    normal: list[str] = []
    for channel in dict.fromkeys(members):
        if is_process_local(channel):
            local.setdefault(non_local_name(channel), []).append(channel)
        else:
            normal.append(channel)
    plan: dict[int, list[QueueWrite]] = {}
    for name, channels in local.items():
        write = QueueWrite(keys.queue(name), capacity_of(channels[0]), tuple(channels))
        plan.setdefault(shard_index(name, ring_size), []).append(write)
    for channel in normal:
        write = QueueWrite(keys.queue(channel), capacity_of(channel), ())
        plan.setdefault(shard_index(channel, ring_size), []).append(write)
    return plan


def batch_scores(now: float, count: int) -> list[float]:
    """Scores for ``count`` messages queued together: ``now`` and the next larger floats.

    A queue pops the lowest score first and orders equal scores by the message's bytes, so
    messages queued in one call need distinct, increasing scores to pop in the order given.
    Each is one step of float precision above the last (about a quarter of a microsecond for
    today's clock), so a batch spans far less time than the round trip that queues it: a
    message sent after the call returns still scores above all of the batch.
    """
    scores = [now]
    for _ in range(count - 1):
        scores.append(math.nextafter(scores[-1], math.inf))
    return scores
