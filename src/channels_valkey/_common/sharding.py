"""Which shard owns a name, when ``hosts`` lists several servers.

The function must stay exactly the one ``channels_redis`` uses (CRC-32 of the name, folded to
4096 buckets, spread evenly over the ring), or processes running either package would look for
the same process-local channel or group on different servers.
"""

from __future__ import annotations

import binascii

_BUCKETS = 4096


def shard_index(name: str, ring_size: int) -> int:
    """Return the index (``0 <= i < ring_size``) of the shard that owns ``name``."""
    if ring_size == 1:
        return 0
    bucket = binascii.crc32(name.encode("utf8")) & (_BUCKETS - 1)
    return int(bucket / (_BUCKETS / ring_size))
