"""The retry policy (``_common.retry``): pauses, the deadline, and the loop built on them."""

from __future__ import annotations

import time

import pytest

from channels_valkey._common import retry
from channels_valkey.exceptions import ServerUnreachable


def test_pauses_double_from_the_first_up_to_the_cap_with_jitter() -> None:
    for failures in range(1, 30):
        step = min(retry.MAX_PAUSE, retry.FIRST_PAUSE * 2 ** (failures - 1))
        pauses = [retry.pause(failures) for _ in range(200)]
        assert all(step / 2 <= pause <= step for pause in pauses)
        assert len(set(pauses)) > 1  # jittered, so processes do not retry in lockstep
    assert max(retry.pause(100) for _ in range(200)) <= retry.MAX_PAUSE


def test_an_outage_is_given_up_once_the_deadline_has_passed() -> None:
    fresh = retry.Outage()
    assert fresh.next_pause() is not None
    expired = retry.Outage(started=time.monotonic() - retry.DEADLINE)
    assert expired.next_pause() is None


def test_no_pause_runs_past_the_deadline() -> None:
    """The last attempt starts when the deadline is reached, not a pause later."""
    almost = retry.Outage(started=time.monotonic() - retry.DEADLINE + 0.01)
    almost.failures = 50  # pauses at their cap by now
    delay = almost.next_pause()
    assert delay is not None
    assert delay <= 0.01


async def test_retrying_returns_once_an_attempt_succeeds() -> None:
    failures = [ConnectionError("refused"), TimeoutError("timed out")]

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert await retry.retrying(attempt, retry.TRANSIENT_ERRORS, "somewhere") == "done"


async def test_retrying_raises_server_unreachable_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retry, "DEADLINE", 0.2)
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError("refused")

    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="cannot reach Valkey at somewhere: refused"):
        await retry.retrying(attempt, retry.TRANSIENT_ERRORS, "somewhere")
    assert time.monotonic() - started >= 0.2
    assert attempts > 2  # tried again in between, with pauses that started short


async def test_retrying_raises_other_errors_at_once() -> None:
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("not a connection problem")

    with pytest.raises(ValueError, match="not a connection problem"):
        await retry.retrying(attempt, retry.TRANSIENT_ERRORS, "somewhere")
    assert attempts == 1
