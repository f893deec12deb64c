"""The pub/sub layer (``channels_valkey.pubsub``): channels and groups over Valkey PUB/SUB.

Its options, its per-loop local state (pure), the subscribe conversation as data (pure), the
subscriber that owns a connection per server, the relocation that moves a subscriber's names
when a cluster's slots move, where names publish and subscribe (one server, shards or a
cluster), and the per-loop layer that owns them. Imports ``_common``, never
``_queue``.
"""
