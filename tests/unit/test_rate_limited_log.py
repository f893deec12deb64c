"""``RateLimitedLog``: one line per interval, and the next line says how many were held back.

Drops and outages can repeat once per message; the log must still tell the operator that
they happened, and how often. The clock is the test's, so no test waits.
"""

from __future__ import annotations

import logging

import pytest

from channels_valkey._common import log as rate_limited_log
from channels_valkey._common.log import RateLimitedLog
from support.clock import Clock

LOGGER = "channels_valkey.tests.rate_limited"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(rate_limited_log, "time", clock)
    return clock


def test_one_line_per_interval_then_the_count_of_those_held_back(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log = RateLimitedLog(logging.getLogger(LOGGER), interval=60.0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in range(5):
            log.warning("dropped message %d", n)
        clock.now += 60.0
        log.warning("dropped message %d", 5)
    assert [record.getMessage() for record in caplog.records] == [
        "dropped message 0",
        "dropped message 5 (4 similar events not logged in the last 60 s)",
    ]


def test_after_a_quiet_interval_the_line_has_no_count(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log = RateLimitedLog(logging.getLogger(LOGGER), interval=10.0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        log.warning("server down")
        clock.now += 10.0
        log.warning("server down")
    assert [record.getMessage() for record in caplog.records] == ["server down"] * 2
