"""``shard_index`` must place every name where ``channels_redis`` 4.x places it."""

from __future__ import annotations

import binascii
import random
import string

import pytest
from channels_redis.utils import _consistent_hash

from channels_valkey._common.sharding import shard_index


def _names() -> list[str]:
    rng = random.Random(20240601)
    alphabet = string.ascii_letters + string.digits + "-_.!"
    names = [
        "",
        "a",
        "chat",
        "specific.",
        "specific.0123456789abcdef0123456789abcdef!",
        "http.request",
        "websocket.receive",
        "group-1",
        "caf\u00e9",
        "\u2603 snow",
        "x" * 99,
        "x" * 1000,
    ]
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 99))) for _ in range(3000)]
    return names


NAMES = _names()
RING_SIZES = range(1, 8)


@pytest.mark.parametrize("ring_size", RING_SIZES)
def test_equals_channels_redis_for_every_name(ring_size: int) -> None:
    mismatches = [
        name for name in NAMES if shard_index(name, ring_size) != _consistent_hash(name, ring_size)
    ]
    assert mismatches == []


@pytest.mark.parametrize("ring_size", RING_SIZES)
def test_in_range_and_every_shard_used(ring_size: int) -> None:
    indexes = {shard_index(name, ring_size) for name in NAMES}
    assert indexes <= set(range(ring_size))
    assert indexes == set(range(ring_size))


def test_one_shard_is_always_zero() -> None:
    assert {shard_index(name, 1) for name in NAMES} == {0}


def _one_name_per_bucket() -> list[str]:
    """A name whose CRC-32 lands in each of the 4096 buckets, so every slice edge is hit."""
    seen: dict[int, str] = {}
    counter = 0
    while len(seen) < 4096:
        name = f"n{counter}"
        seen.setdefault(binascii.crc32(name.encode()) & 0xFFF, name)
        counter += 1
    return list(seen.values())


BUCKET_NAMES = _one_name_per_bucket()


@pytest.mark.parametrize("ring_size", [2, 3, 5, 6, 7, 11, 64, 4095, 4096])
def test_every_bucket_maps_like_channels_redis(ring_size: int) -> None:
    for name in BUCKET_NAMES:
        index = shard_index(name, ring_size)
        assert 0 <= index < ring_size
        assert index == _consistent_hash(name, ring_size), name
