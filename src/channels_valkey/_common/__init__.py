"""What both layers use: hosts and connections, the pipelined lane per server (and per cluster
primary), health checks, the retry policy, runs shared by concurrent callers, per-loop
ownership, the background loop for sync callers, Lua script calls, logging, sharding and
message checks.

Nothing here imports ``_queue``, ``_pubsub`` or ``_cli``.
"""
