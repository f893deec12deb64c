"""The core layer's Lua scripts (``lua/``), loaded once per process and called by SHA.

Each one's contract (keys, arguments, reply) is at the top of its ``.lua`` file.
"""

from __future__ import annotations

from channels_valkey._common.scripts import Script

SEND = Script.load(__package__, "send")
SEND_MANY = Script.load(__package__, "send_many")
SEND_BATCH = Script.load(__package__, "send_batch")
GROUP_ADD = Script.load(__package__, "group_add")
REQUEUE = Script.load(__package__, "requeue")
WAKE = Script.load(__package__, "wake")
ALIVE = Script.load(__package__, "alive")
