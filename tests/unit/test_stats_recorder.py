"""The counters behind ``layer.stats()``: what a snapshot holds, and how outages are timed.

Outages are counted per connection, so that two connections down at once, a connection
reported lost twice, or one closed for good while down are each counted once and for as long
as they lasted. The clock is the module's own ``time``, replaced here by one the test moves.
"""

from __future__ import annotations

import dataclasses

import pytest

from channels_valkey import stats
from channels_valkey.stats import LayerStats, StatsRecorder
from support.clock import Clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(stats, "time", clock)
    return clock


def test_a_new_recorder_reads_all_zero() -> None:
    assert StatsRecorder().snapshot() == LayerStats()
    assert set(LayerStats().as_dict().values()) == {0}


def test_a_snapshot_copies_every_counter_and_does_not_follow_them() -> None:
    recorder = StatsRecorder()
    counters = [field.name for field in dataclasses.fields(LayerStats)]
    counters.remove("seconds_disconnected")
    for number, name in enumerate(counters, start=1):
        setattr(recorder, name, number)
    snapshot = recorder.snapshot()
    assert [getattr(snapshot, name) for name in counters] == list(range(1, len(counters) + 1))
    recorder.messages_sent += 10
    assert snapshot.messages_sent == counters.index("messages_sent") + 1
    assert snapshot.as_dict()["messages_sent"] == snapshot.messages_sent


def test_a_reconnect_counts_only_after_a_disconnect(clock: Clock) -> None:
    recorder = StatsRecorder()
    recorder.reconnected("a")  # a first connect is not a reconnect
    assert recorder.snapshot().reconnects == 0
    recorder.disconnected("a")
    clock.now += 2
    recorder.reconnected("a")
    recorder.reconnected("a")
    assert recorder.snapshot().reconnects == 1
    assert recorder.snapshot().seconds_disconnected == 2


def test_an_outage_reported_twice_is_timed_from_the_first_report(clock: Clock) -> None:
    recorder = StatsRecorder()
    recorder.disconnected("a")
    clock.now += 1
    recorder.disconnected("a")
    clock.now += 1
    recorder.reconnected("a")
    assert recorder.snapshot().seconds_disconnected == 2


def test_an_ongoing_outage_counts_up_to_the_snapshot(clock: Clock) -> None:
    recorder = StatsRecorder()
    recorder.disconnected("a")
    clock.now += 3
    assert recorder.snapshot().seconds_disconnected == 3
    clock.now += 2
    assert recorder.snapshot().seconds_disconnected == 5
    assert recorder.snapshot().reconnects == 0


def test_outages_of_several_connections_add_up(clock: Clock) -> None:
    recorder = StatsRecorder()
    recorder.disconnected("a")
    recorder.disconnected("b")
    clock.now += 4
    recorder.reconnected("a")
    clock.now += 1
    recorder.reconnected("b")
    snapshot = recorder.snapshot()
    assert snapshot.reconnects == 2
    assert snapshot.seconds_disconnected == 4 + 5


def test_a_connection_closed_while_down_ends_its_outage_without_a_reconnect(
    clock: Clock,
) -> None:
    recorder = StatsRecorder()
    recorder.disconnected("a")
    clock.now += 1.5
    recorder.closed("a")
    clock.now += 10
    recorder.reconnected("a")  # a later connect is a new connection, not this outage's end
    recorder.closed("b")  # closing a connection that was up changes nothing
    snapshot = recorder.snapshot()
    assert snapshot.reconnects == 0
    assert snapshot.seconds_disconnected == 1.5
