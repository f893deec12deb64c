"""``SingleFlight``: callers that come during a run share it; the next one starts another.

The cluster code reads a slot map through it, so a burst of stale-map errors costs one read.
Each test drives the operation with events, never with time.
"""

from __future__ import annotations

import asyncio

import pytest

from channels_valkey._common.single_flight import SingleFlight


class Operation:
    """An operation the test lets finish: counts its runs, fails when told to."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self) -> None:
        self.runs += 1
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with


async def test_callers_during_a_run_share_it() -> None:
    operation = Operation()
    flight = SingleFlight(operation)
    callers = [asyncio.ensure_future(flight()) for _ in range(5)]
    await asyncio.sleep(0)
    operation.release.set()
    await asyncio.gather(*callers)
    assert operation.runs == 1


async def test_a_caller_after_a_run_starts_another() -> None:
    operation = Operation()
    operation.release.set()
    flight = SingleFlight(operation)
    await flight()
    await flight()
    assert operation.runs == 2


async def test_a_run_s_error_reaches_every_caller_and_the_next_run_is_fresh() -> None:
    operation = Operation()
    operation.fail_with = RuntimeError("map unreadable")
    flight = SingleFlight(operation)
    callers = [asyncio.ensure_future(flight()) for _ in range(3)]
    await asyncio.sleep(0)
    operation.release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert [str(outcome) for outcome in outcomes] == ["map unreadable"] * 3
    operation.fail_with = None
    await flight()
    assert operation.runs == 2


async def test_a_cancelled_caller_leaves_the_run_to_the_others() -> None:
    operation = Operation()
    flight = SingleFlight(operation)
    leaving = asyncio.ensure_future(flight())
    staying = asyncio.ensure_future(flight())
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    operation.release.set()
    await staying
    assert operation.runs == 1


async def test_finish_waits_for_a_background_run_whatever_its_outcome() -> None:
    operation = Operation()
    operation.fail_with = RuntimeError("nobody awaited this")
    flight = SingleFlight(operation)
    run = flight.start()
    finishing = asyncio.ensure_future(flight.finish())
    await asyncio.sleep(0)
    assert not finishing.done()
    operation.release.set()
    await finishing
    assert run.done()
    await flight.finish()  # nothing running: returns at once
