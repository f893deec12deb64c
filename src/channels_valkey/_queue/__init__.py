"""The core layer (``channels_valkey.core``): queues and groups kept in Valkey.

Key names, group-send planning, the Lua scripts and ``lua/``, the shards (one server or a
cluster) that run them, the readers that pop queues, the mailbox that hands popped messages to
``receive()``, liveness, and the per-loop resources that own them. Imports ``_common``, never
``_pubsub``.
"""
