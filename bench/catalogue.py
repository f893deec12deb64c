"""The catalogue: which layers the main and cluster benchmarks measure, and which workloads.

A layer is a class in a virtual environment of its own (``bench/run`` makes them) and the
peer it is compared with; a workload is a name that ``workload.py`` knows how to run, with
the title and unit the report gives it. ``--bulk``, ``--burst`` and ``--sync`` measure other
things; their lists are at the end, drawn from the same layers where they are the same.
Runners and reports read these tables, and measuring processes in every venv import them:
nothing here runs anything, and only the standard library is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layer:
    key: str  # the name in tables
    venv: str  # under --venvs
    path: str  # module.Class
    kind: str  # "core" or "pubsub"
    peer: str  # the key of the layer it is compared with

    @property
    def is_peer(self) -> bool:
        return self.key == self.peer


CORE_PEER = "channels_redis"
PUBSUB_PEER = "channels_redis pubsub"
LAYERS = (
    Layer(CORE_PEER, "channels-redis", "channels_redis.core.RedisChannelLayer", "core", CORE_PEER),
    Layer("ours", "ours", "channels_valkey.core.ValkeyChannelLayer", "core", CORE_PEER),
    Layer(
        "ours+pyparser",
        "ours-pyparser",
        "channels_valkey.core.ValkeyChannelLayer",
        "core",
        CORE_PEER,
    ),
    Layer(
        "channels_valkey 0.3",
        "channels-valkey-0.3",
        "channels_valkey.core.ValkeyChannelLayer",
        "core",
        CORE_PEER,
    ),
    Layer(
        "ours-baseline",
        "ours-baseline",
        "channels_valkey.core.ValkeyChannelLayer",
        "core",
        CORE_PEER,
    ),
    Layer(
        PUBSUB_PEER,
        "channels-redis",
        "channels_redis.pubsub.RedisPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
    Layer(
        "ours pubsub",
        "ours",
        "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
    Layer(
        "ours pubsub+pyparser",
        "ours-pyparser",
        "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
    Layer(
        "ours-baseline pubsub",
        "ours-baseline",
        "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
    Layer(
        "channels_valkey 0.3 pubsub",
        "channels-valkey-0.3",
        "channels_valkey.pubsub.ValkeyPubSubChannelLayer",
        "pubsub",
        PUBSUB_PEER,
    ),
)

#: The virtual environments the ceiling is measured in (valkey-py with and without libvalkey).
CEILING_VENVS = ("ours", "ours-pyparser")
#: Our layers and the same layers of the baseline build (``bench/run --baseline REF``).
BASELINE_OF = {"ours": "ours-baseline", "ours pubsub": "ours-baseline pubsub"}
BASELINE_VENV = "ours-baseline"


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    kinds: tuple[str, ...]
    what: str
    #: Measured for this many times --seconds (ping-pong: more samples for its p99).
    scale: float = 1.0
    #: Run when --workloads is not given (else only when named, or as ``concurrent``).
    default: bool = True


WORKLOADS = (
    Workload(
        "send-receive",
        "send/receive, one normal channel, sender and receiver tasks in one process",
        ("core",),
        "messages/s",
    ),
    Workload(
        "send-receive-2proc",
        "send/receive, one normal channel, sender and receiver in two processes",
        ("core",),
        "messages/s",
    ),
    Workload(
        "fan-in-200",
        "fan-in: 200 process-local channels each receiving, one sender, one process",
        ("core", "pubsub"),
        "messages/s",
    ),
    Workload(
        "group-1000",
        "group_send to 1000 process-local channels of one process (sender in it too)",
        ("core", "pubsub"),
        "deliveries/s",
    ),
    Workload(
        "group-1000-4proc",
        "group_send to 1000 process-local channels spread over 4 processes (sender in a 5th)",
        ("core", "pubsub"),
        "deliveries/s",
    ),
    Workload(
        "ping-pong",
        "ping-pong between process-local channels of two processes, one exchange at a time",
        ("core", "pubsub"),
        "ping-pongs/s",
        scale=2.0,
    ),
    *(
        Workload(
            f"concurrent-{senders}-{scope}",
            f"{senders} sender tasks at once, each to its own {what} received by its own "
            "receiver task, one process",
            kinds,
            "messages/s",
            default=False,
        )
        for scope, what, kinds in (
            ("local", "process-local channel", ("core", "pubsub")),
            ("normal", "normal channel", ("core",)),
        )
        for senders in (40, 200)
    ),
)
WORKLOAD_KEYS = tuple(w.key for w in WORKLOADS)
DEFAULT_WORKLOAD_KEYS = tuple(w.key for w in WORKLOADS if w.default)
#: ``--workloads concurrent`` names these.
CONCURRENT_KEYS = tuple(w.key for w in WORKLOADS if w.key.startswith("concurrent-"))

SPREAD_WORKLOADS = (
    Workload(
        "spread-24",
        "24 normal channels, 8 in each third of the slots, each with a receiver; one sender "
        "sends to them in turn; one process",
        ("core",),
        "messages/s",
    ),
    Workload(
        "spread-24-4proc",
        "the same 24 channels split over 4 processes (6 each, 2 per third of the slots), each "
        "with one sender and a receiver per channel",
        ("core",),
        "messages/s",
    ),
)
#: The main benchmark's default workloads and the spread ones; not ``concurrent-*``, whose
#: connection count reads one server.
CLUSTER_WORKLOADS = (*(w for w in WORKLOADS if w.default), *SPREAD_WORKLOADS)
CLUSTER_WORKLOAD_KEYS = tuple(w.key for w in CLUSTER_WORKLOADS)

#: How many queues (slots) each workload writes to, for the report.
QUEUES = {
    "send-receive": "1 queue",
    "send-receive-2proc": "1 queue",
    "fan-in-200": "1 queue (one process's)",
    "group-1000": "group key + 1 process queue",
    "group-1000-4proc": "group key + 4 process queues",
    "ping-pong": "2 process queues, one message at a time",
    "spread-24": "24 queues, 8 per primary of 3",
    "spread-24-4proc": "24 queues, 8 per primary of 3",
}

#: The key of the topology that is the server ``bench/run`` started.
STANDALONE = "standalone"


def layer_named(key: str) -> Layer:
    """The layer of the main benchmark called ``key``."""
    return next(layer for layer in LAYERS if layer.key == key)


# --- --bulk: bulk sends against loops of single sends, and message sizes ----------------------

#: The layers, and the ways of sending N messages each is measured with (channels_redis has
#: no bulk method; a pub/sub ``gather`` would measure the same publishes as ``loop``).
BULK_MODES = (
    ("ours", ("loop", "gather", "bulk")),
    ("channels_redis", ("loop", "gather")),
    ("ours pubsub", ("loop", "bulk")),
    ("channels_redis pubsub", ("loop",)),
)
#: Messages per call.
BULK_BATCHES = (10, 100)
#: Normal channels in the ``group`` workload's group.
BULK_GROUP_MEMBERS = 20
#: Message bodies of the size sweep, in bytes; the first is the reference.
BULK_SIZES = (256, 1024, 4096, 16384, 32768, 65536, 131072, 262144, 1048576)
#: The layers of the size sweep.
BULK_SIZE_LAYERS = ("ours", "channels_redis")


def bulk_plan() -> list[tuple[str, dict[str, Any]]]:
    """Every bulk measurement of a round, as (layer key, parameters), in the base order."""
    runs: list[tuple[str, dict[str, Any]]] = []
    for workload in ("send", "group"):
        for batch in BULK_BATCHES:
            for layer, modes in BULK_MODES:
                for mode in modes:
                    runs.append((layer, {"workload": workload, "batch": batch, "mode": mode}))
    for size in BULK_SIZES:
        for layer in BULK_SIZE_LAYERS:
            runs.append((layer, {"workload": "size", "size": size}))
    return runs


# --- --burst: the example chat's room ---------------------------------------------------------


@dataclass(frozen=True)
class BurstLayer:
    key: str  # the name in tables
    venv: str  # under --venvs
    path: str  # module.Class
    #: "default" (the layer's defaults) or "burst" (capacity = the burst's clients x messages).
    options: str = "default"

    def config(self, clients: int, messages: int) -> dict[str, Any] | None:
        return {"capacity": clients * messages} if self.options == "burst" else None


CORE = "channels_valkey.core.ValkeyChannelLayer"
PUBSUB = "channels_valkey.pubsub.ValkeyPubSubChannelLayer"
BURST_LAYERS = (
    BurstLayer("ours", "ours", CORE),
    BurstLayer("ours capacity=burst", "ours", CORE, "burst"),
    BurstLayer("ours pubsub", "ours", PUBSUB),
    BurstLayer("ours pubsub capacity=burst", "ours", PUBSUB, "burst"),
    BurstLayer(
        "channels_redis pubsub", "channels-redis", "channels_redis.pubsub.RedisPubSubChannelLayer"
    ),
    BurstLayer("channels_redis", "channels-redis", "channels_redis.core.RedisChannelLayer"),
)
#: (clients, messages each) of a default run.
DEFAULT_BURSTS = ((10, 5), (20, 10), (60, 20))


# --- --sync: publishing from synchronous code --------------------------------------------------

#: case: (venv, layer class, how a call is made).
SYNC_CASES = {
    "ours sync": ("ours", CORE, "sync"),
    "ours async_to_sync": ("ours", CORE, "async_to_sync"),
    "ours await": ("ours", CORE, "await"),
    "channels_redis async_to_sync": (
        "channels-redis",
        "channels_redis.core.RedisChannelLayer",
        "async_to_sync",
    ),
}
SYNC_METHODS = ("send", "group_send", "group_send-normal")
#: The goals for ``ours sync``: times the rate of these cases.
SYNC_TARGETS = {"channels_redis async_to_sync": 10.0, "ours async_to_sync": 3.0}
