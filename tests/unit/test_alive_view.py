"""The view of the dead a layer keeps (``_queue.liveness.Liveness``): pure logic, no server."""

from __future__ import annotations

from channels_valkey._queue.liveness import Liveness
from channels_valkey._queue.scripts import AliveReply


def liveness() -> Liveness:
    return Liveness("me", "asgi$alive", expiry=60.0, group_expiry=86400)


def test_timing_follows_process_expiry() -> None:
    view = liveness()
    assert view.interval == 15.0
    assert view.keep == 86400 + 60  # memberships of a dead process have expired by then


def test_a_new_view_is_out_of_date_and_judges_nobody() -> None:
    view = liveness()
    assert not view.fresh
    assert not view.has_dead
    assert view.dead_among(["specific.other!a", "chat"]) == []


def test_members_of_dead_processes_are_found() -> None:
    view = liveness()
    view.learn(AliveReply(None, (2, "123.5"), ["dead1", "dead2"]))
    assert view.fresh
    members = ["specific.dead1!a", "specific.live!b", "chat.dead1", "ws.specific.dead2!c"]
    assert view.dead_among(members) == ["specific.dead1!a", "ws.specific.dead2!c"]


def test_a_layer_never_takes_itself_for_dead() -> None:
    view = liveness()
    view.learn(AliveReply(None, (1, "123.5"), ["me"]))
    assert not view.has_dead
    assert view.dead_among(["specific.me!a"]) == []


def test_an_unchanged_reply_keeps_the_dead_known() -> None:
    """The registry sends the ids only when the dead changed; otherwise the view stays."""
    view = liveness()
    view.learn(AliveReply(None, (1, "123.5"), ["dead1"]))
    view.learn(AliveReply(None, (1, "123.5"), None))
    assert view.dead_among(["specific.dead1!a"]) == ["specific.dead1!a"]
    view.learn(AliveReply(None, (0, ""), []))  # it came back, or was dropped
    assert not view.has_dead
