"""What a helper process does in each multi-process workload (its role).

The measuring process (``shapes.py``) starts helpers with ``measuring/workload.py helper ROLE``;
each role sets up its channels, says ``ready``, and runs the two epochs as told, acknowledging
what it received so the sender's flow control holds across processes. Runs in the measured
layer's venv.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from measuring.channel_api import make_members
from measuring.flow import WINDOW, Progress, Window, check, gather_all, message, receive_epoch
from measuring.helpers import Coordinator
from measuring.roundtrips import ROLE
from measuring.shapes import fan_in_epoch

#: A helper acknowledges received messages every this many (and at the last one).
ACK_EVERY = 10


async def helper_receiver(layer: Any, link: Coordinator, params: dict[str, Any]) -> None:
    """``send-receive-2proc``: receive the normal channel, acknowledging every ACK_EVERY."""
    channel = params["channel"]
    link.emit("ready")
    for epoch in (0, 1):

        def ack(count: int) -> None:
            if count % ACK_EVERY == 0:
                link.emit("ack", n=count)

        count = await receive_epoch(layer, channel, epoch, ack)
        link.emit("ack", n=count)
        link.emit("done", epoch=epoch)


async def helper_members(layer: Any, link: Coordinator, params: dict[str, Any]) -> None:
    """``group-1000-4proc``: this process's share of the group; acknowledge complete sends."""
    channels = await make_members(layer, params["members"])
    link.emit("ready")
    for epoch in (0, 1):
        progress = Progress(len(channels))

        def advance(count: int, progress: Progress = progress) -> None:
            if progress.advance(count):
                link.emit("ack", n=progress.complete)

        await gather_all(*(receive_epoch(layer, c, epoch, advance) for c in channels))
        link.emit("done", epoch=epoch)


async def helper_ponger(layer: Any, link: Coordinator, params: dict[str, Any]) -> None:
    """``ping-pong``: answer each ping on the pinger's channel."""
    ROLE.set("ponger")
    own = await layer.new_channel()
    peer = params["peer"]
    link.emit("ready", channel=own)
    for epoch in (0, 1):
        seq = 0
        while True:
            got = await layer.receive(own)
            last = check(own, got, "ping", epoch, seq)
            await layer.send(peer, message("pong", epoch, seq, last=last))
            seq += 1
            if last:
                break
        link.emit("done", epoch=epoch)


async def helper_spread(layer: Any, link: Coordinator, params: dict[str, Any]) -> None:
    """``spread-24-4proc``: a sender and a receiver per channel for this process's channels,
    one epoch per ``run`` command."""
    channels = params["channels"]
    link.emit("ready")
    for epoch in (0, 1):
        command = await link.command("run")
        sent = await fan_in_epoch(layer, channels, epoch, command["seconds"], Window(WINDOW))
        link.emit("done", epoch=epoch, sent=sent)


HELPER_ROLES: dict[str, Callable[[Any, Coordinator, dict[str, Any]], Coroutine[Any, Any, None]]]
HELPER_ROLES = {
    "receiver": helper_receiver,
    "members": helper_members,
    "ponger": helper_ponger,
    "spread": helper_spread,
}
