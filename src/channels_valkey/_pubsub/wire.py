"""The pub/sub conversation on one connection, as data: commands out, replies in. No I/O.

On a subscribed connection the server answers every ``SUBSCRIBE``/``UNSUBSCRIBE`` with one
reply *per channel name*, every ``PING`` with one ``pong``, and a refused command with one
error; in between it pushes ``message`` frames at any time. Replies come in the order the
commands were written, so a FIFO of the commands in flight (:class:`ReplyTracker`) knows which
subscription each confirmation is for. That is how ``new_channel()`` can return only once the
server has confirmed the subscription, and how an unsubscribe followed by a re-subscribe of
the same name is never mistaken for a confirmation of the second one.

On a Valkey Cluster the layer speaks *sharded* pub/sub (:data:`SHARDED`): ``SSUBSCRIBE``,
``SUNSUBSCRIBE``, pushed ``smessage`` frames. Two things differ there:

- every name of one ``SSUBSCRIBE``/``SUNSUBSCRIBE`` must hash to one slot, so :func:`batch`
  also cuts commands where the slot changes, and each command remembers its slot;
- the server itself unsubscribes a connection from the names of a slot it stops serving (the
  slot moved, or the node became a replica), with ``sunsubscribe`` frames nobody asked for.
  Such a frame matches no command in flight (:meth:`ReplyTracker.expects` says so), except in
  one race: the push for a name arrives while our own ``SUNSUBSCRIBE`` of it is in flight. The
  push is then taken as the answer, and the real answer, a ``-MOVED`` for that slot, arrives
  when no command of that slot is in flight: :meth:`ReplyTracker.expects_error` tells the
  caller to skip it. Either way the tracker stays in step with the server.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

SUBSCRIBE = "SUBSCRIBE"
UNSUBSCRIBE = "UNSUBSCRIBE"
PING = "PING"


@dataclass(frozen=True)
class Dialect:
    """The commands one kind of pub/sub connection sends for :data:`SUBSCRIBE` and
    :data:`UNSUBSCRIBE`, and whether names must be batched by hash slot."""

    subscribe: str
    unsubscribe: str
    sharded: bool

    def command(self, kind: str) -> str:
        if kind == SUBSCRIBE:
            return self.subscribe
        if kind == UNSUBSCRIBE:
            return self.unsubscribe
        return kind


#: Standalone servers and Sentinel-managed primaries: classic pub/sub.
PLAIN = Dialect("SUBSCRIBE", "UNSUBSCRIBE", sharded=False)
#: A Valkey Cluster: sharded pub/sub, each name served by the primary of its slot.
SHARDED = Dialect("SSUBSCRIBE", "SUNSUBSCRIBE", sharded=True)

#: Names per SUBSCRIBE/UNSUBSCRIBE command: a burst of new channels costs one command per
#: this many names, and a re-subscription after a reconnect stays a few commands.
MAX_NAMES_PER_COMMAND = 1000

_REPLY_KIND = {
    b"subscribe": SUBSCRIBE,
    b"unsubscribe": UNSUBSCRIBE,
    b"ssubscribe": SUBSCRIBE,
    b"sunsubscribe": UNSUBSCRIBE,
    b"pong": PING,
}
_MESSAGE_KINDS = frozenset({b"message", b"smessage"})


@dataclass(frozen=True)
class Op:
    """One name to (un)subscribe, or a ``PING``; ``done`` resolves when the server answers."""

    kind: str
    name: str = ""
    done: asyncio.Future[None] | None = None


@dataclass
class Command:
    kind: str
    ops: deque[Op] = field(default_factory=deque)
    #: The hash slot of every name in the command (sharded pub/sub only).
    slot: int | None = None

    @property
    def args(self) -> list[str]:
        return [op.name for op in self.ops] if self.kind != PING else []


def batch(ops: Iterable[Op], slot_of: Callable[[str], int] | None = None) -> list[Command]:
    """Group consecutive ops of one kind (and, with ``slot_of``, of one slot) into commands,
    keeping their order."""
    commands: list[Command] = []
    for op in ops:
        slot = slot_of(op.name) if slot_of is not None and op.kind != PING else None
        last = commands[-1] if commands else None
        if (
            last is None
            or last.kind != op.kind
            or last.slot != slot
            or op.kind == PING
            or len(last.ops) >= MAX_NAMES_PER_COMMAND
        ):
            last = Command(op.kind, slot=slot)
            commands.append(last)
        last.ops.append(op)
    return commands


@dataclass(frozen=True)
class Pushed:
    """A ``message`` frame: ``payload`` published on pub/sub channel ``name``."""

    name: str
    payload: bytes


@dataclass(frozen=True)
class Answer:
    """A reply to one of our commands: which kind, and for which name."""

    kind: str
    name: str


class ProtocolMismatch(ConnectionError):
    """A reply that matches no command in flight; the connection is no longer trusted."""


def parse_reply(reply: object) -> Pushed | Answer | None:
    """Classify what the server sent; ``None`` for frames this layer never asks for."""
    if reply == b"PONG":  # RESP3 answers PING with a plain string, even when subscribed
        return Answer(PING, "")
    if not isinstance(reply, list) or len(reply) < 2 or not isinstance(reply[0], bytes):
        return None
    head = reply[0]
    if head in _MESSAGE_KINDS and len(reply) == 3:
        return Pushed(reply[1].decode("utf8"), reply[2])
    kind = _REPLY_KIND.get(head)
    if kind is None:
        return None
    name = reply[1].decode("utf8") if kind != PING else ""
    return Answer(kind, name)


class ReplyTracker:
    """The commands written on one connection and not fully answered yet, oldest first."""

    def __init__(self) -> None:
        self._in_flight: deque[Command] = deque()

    def __len__(self) -> int:
        return len(self._in_flight)

    def sent(self, command: Command) -> None:
        self._in_flight.append(Command(command.kind, deque(command.ops), command.slot))

    def expects(self, answer: Answer) -> bool:
        """Whether ``answer`` is the one the oldest command in flight waits for."""
        if not self._in_flight:
            return False
        op = self._in_flight[0].ops[0]
        return op.kind == answer.kind and op.name == answer.name

    def expects_error(self, slot: int | None) -> bool:
        """Whether an error reply about ``slot`` (a ``-MOVED``) can be the oldest command's;
        ``False`` means it answers an unsubscribe already settled by the server's push."""
        return bool(self._in_flight) and (slot is None or self._in_flight[0].slot == slot)

    def answered(self, answer: Answer) -> None:
        """Resolve the op this answer is for; raises ProtocolMismatch if it fits none."""
        if not self._in_flight:
            raise ProtocolMismatch(f"unexpected {answer.kind} reply for {answer.name!r}")
        command = self._in_flight[0]
        op = command.ops[0]
        if op.kind != answer.kind or op.name != answer.name:
            raise ProtocolMismatch(
                f"got a {answer.kind} reply for {answer.name!r} while waiting for "
                f"{op.kind} {op.name!r}"
            )
        command.ops.popleft()
        if not command.ops:
            self._in_flight.popleft()
        if op.done is not None and not op.done.done():
            op.done.set_result(None)

    def refused(self, error: Exception) -> list[Op]:
        """The oldest command was refused as a whole: return its ops, whose futures the
        caller settles (it may fail them, or send them again elsewhere)."""
        if not self._in_flight:
            raise ProtocolMismatch(f"unexpected error reply: {error}")
        return list(self._in_flight.popleft().ops)
