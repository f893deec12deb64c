"""The catalogue: which layers the main and cluster benchmarks measure, and which workloads.

A layer is a class in a virtual environment of its own (``bench/run`` makes them) and the
peer it is compared with; a workload is a name that ``workload.py`` knows how to run, with
the title and unit the report gives it. Runners and reports read these tables; nothing here
runs anything. (``--burst``, ``--sync`` and ``--bulk`` measure other things and keep their
own short lists, drawn from these layers where they are the same.)
"""

from __future__ import annotations

from dataclasses import dataclass


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
