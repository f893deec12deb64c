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
