"""The statistics every part of the benchmark reports with: medians, quantiles, rotation.

One definition of each, so that a p99 in the main benchmark, the failover runs and the
pub/sub probe means the same thing.

``quantile`` interpolates linearly between the two closest ranks (``q * (n - 1)`` counted
from 0; Hyndman and Fan's type 7, numpy's default and ``statistics.quantiles(...,
method="inclusive")``, which ``example/burst.py`` uses for the burst runs' latencies). It is
continuous in ``q``, needs no rounding rule (nearest-rank variants disagree on ties: Python's
``round`` rounds half to even, ``int`` truncates), and its p50 is the median that the tables
report everywhere else.

``rotated`` is how every runner interleaves what it compares: each round starts one step
further along the list, so slow drifts of a shared machine spread over all of them, and a
ratio taken within one round compares measurements made seconds apart.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values given (``None`` ones left out); ``None`` when there are none."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def quantile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0 to 1), linear between the closest ranks; ``None`` when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rotated(items: list[T], by: int) -> list[T]:
    """``items`` starting at index ``by`` (modulo their number), the rest wrapped around."""
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def within_rounds(mine: dict[Any, float], base: dict[Any, float]) -> list[float]:
    """Per round present in both (keyed by round): ``mine`` divided by ``base``."""
    return [mine[n] / base[n] for n in mine if base.get(n)]
