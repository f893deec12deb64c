"""Lua scripts called by SHA: what ``Script.load`` reads and what ``Script.command`` sends.

A server runs ``EVALSHA`` only if the SHA is that of the source the layer loads after a
``NOSCRIPT``: a SHA computed from anything else (another encoding, a stale copy) would load the
script and then miss it again on every call. The command's shape is what Valkey (and, on a
cluster, the routing by key) reads: the SHA, the number of keys, the keys, then the arguments.
"""

from __future__ import annotations

import dataclasses
import hashlib
from importlib.resources import files

import pytest

from channels_valkey._common.scripts import Script
from channels_valkey._queue import scripts as queue_scripts

#: The core layer's scripts, as its modules load them.
QUEUE_SCRIPTS = [value for value in vars(queue_scripts).values() if isinstance(value, Script)]


def test_load_reads_the_packaged_source_and_hashes_it() -> None:
    script = Script.load("channels_valkey._queue", "send")
    path = files("channels_valkey._queue").joinpath("lua").joinpath("send.lua")
    assert script.name == "send"
    assert script.source == path.read_text("utf-8")
    assert script.sha == hashlib.sha1(script.source.encode("utf-8")).hexdigest()
    # As SCRIPT LOAD answers it: 40 lower-case hex digits.
    assert len(script.sha) == 40
    assert script.sha == script.sha.lower()


def test_every_script_of_the_core_layer_is_loaded_with_the_sha_of_its_source() -> None:
    assert len(QUEUE_SCRIPTS) >= 7
    for script in QUEUE_SCRIPTS:
        assert script.sha == hashlib.sha1(script.source.encode("utf-8")).hexdigest(), script.name
        assert script.source.strip(), script.name
    assert len({script.sha for script in QUEUE_SCRIPTS}) == len(QUEUE_SCRIPTS)


def test_a_missing_script_fails_when_loaded() -> None:
    """At import time, not at the first call on a server."""
    with pytest.raises(FileNotFoundError):
        Script.load("channels_valkey._queue", "no_such_script")


def test_command_is_evalsha_with_the_key_count_then_keys_then_arguments() -> None:
    script = Script.load("channels_valkey._queue", "send")
    assert script.command(["k1", "k2"], [b"payload", 60, 1.5, "x"]) == (
        "EVALSHA",
        script.sha,
        2,
        "k1",
        "k2",
        b"payload",
        60,
        1.5,
        "x",
    )


def test_command_without_keys_or_arguments() -> None:
    script = Script("probe", "return 1", hashlib.sha1(b"return 1").hexdigest())
    assert script.command([], []) == ("EVALSHA", script.sha, 0)
    assert script.command([], ["a"]) == ("EVALSHA", script.sha, 0, "a")
    assert script.command(("only",), ()) == ("EVALSHA", script.sha, 1, "only")


def test_the_source_is_never_in_the_command() -> None:
    """It travels only after a NOSCRIPT, with SCRIPT LOAD; every call carries 40 bytes."""
    script = Script.load("channels_valkey._queue", "send_many")
    assert script.source not in script.command(["k"], ["a"])


def test_a_script_cannot_be_changed_after_loading() -> None:
    """Source and SHA must stay a pair."""
    script = Script.load("channels_valkey._queue", "alive")
    with pytest.raises(dataclasses.FrozenInstanceError):
        script.source = "return 2"  # type: ignore[misc]


# The core layer's argument layouts: what each .lua file's header says it reads.


def test_send_many_interleaves_capacity_and_payload_per_queue() -> None:
    deliveries = [("q1", 10, b"a"), ("q2", 20, b"b")]
    assert queue_scripts.send_many_args(1.5, 60, deliveries) == ["1.5", 60, 10, b"a", 20, b"b"]


def test_batch_sends_shared_payloads_once_and_own_copies_per_queue() -> None:
    writes = [("q1", 10, None), ("q2", 20, [b"own1", b"own2"])]
    args = queue_scripts.batch_args(writes, [1.0, 2.0], [b"s1", b"s2"], 3.0, 60)
    assert args == ["3.0", 60, 2, "1.0", "2.0", b"s1", b"s2", 10, 0, 20, 1, b"own1", b"own2"]


def test_requeue_pairs_each_message_with_its_original_score() -> None:
    args = queue_scripts.requeue_args(60, [(1.25, b"a"), (2.5, b"b")])
    assert args == [60, "1.25", b"a", "2.5", b"b"]


def test_an_alive_reply_names_the_dead_only_when_they_changed() -> None:
    changed = queue_scripts.parse_alive([b"2.5", 2, b"170.0", 1, [b"p1", b"p2"]])
    assert changed == queue_scripts.AliveReply(2.5, (2, "170.0"), ["p1", "p2"])
    same = queue_scripts.parse_alive([b"", 2, b"170.0", 0, []])
    assert same == queue_scripts.AliveReply(None, (2, "170.0"), None)
