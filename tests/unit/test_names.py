"""Channel names, group names and messages are checked before the layer does any I/O.

Every layer here points at a port where nothing listens, and every call is bounded by a short
timeout: a check that ran after connecting would surface as a timeout or a connection error,
never as the ``TypeError``/``ValueError`` these tests expect.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from channels_valkey._queue.keys import process_of
from channels_valkey.core import ValkeyChannelLayer

T = TypeVar("T")

DEAD = "valkey://127.0.0.1:1"

#: Far below the layer's retry budget against a dead server (about ten seconds).
BOUND = 1.0

NAME_ERROR = r"name must be a valid unicode string with length < 100"


async def bounded(call: Awaitable[T]) -> T:
    return await asyncio.wait_for(call, BOUND)


@pytest.fixture
def layer() -> ValkeyChannelLayer:
    return ValkeyChannelLayer(hosts=[DEAD])


BAD_NAMES: list[Any] = [
    None,
    5,
    b"chat",
    ["chat"],
    "",
    "a" * 100,
    "a" * 150,
    "chat room",
    "chat/room",
    "chat:room",
    "chat*",
    "caf\u00e9",
    "chat\tx",
    "x!y!z",
    "!suffix",
]

BAD_GROUPS: list[Any] = [*BAD_NAMES, "group!", "group!x"]

VALID_MESSAGE = {"type": "test.message"}


# --- new_channel ----------------------------------------------------------------------------


async def test_new_channel_format(layer: ValkeyChannelLayer) -> None:
    name = await layer.new_channel()
    match = re.fullmatch(r"specific\.([0-9a-f]{32})!([0-9a-f]{32})", name)
    assert match is not None, name
    assert match.group(1) == layer.client_prefix


async def test_new_channel_custom_prefix(layer: ValkeyChannelLayer) -> None:
    name = await layer.new_channel("chat.consumer-1_x")
    assert re.fullmatch(rf"chat\.consumer-1_x\.{layer.client_prefix}![0-9a-f]{{32}}", name)


async def test_new_channel_names_are_unique(layer: ValkeyChannelLayer) -> None:
    names = {await layer.new_channel() for _ in range(200)}
    assert len(names) == 200


async def test_new_channel_client_prefix_differs_between_layers() -> None:
    first, second = ValkeyChannelLayer(hosts=[DEAD]), ValkeyChannelLayer(hosts=[DEAD])
    assert first.client_prefix != second.client_prefix
    assert (await first.new_channel()).split("!")[0] != (await second.new_channel()).split("!")[0]


async def test_new_channel_shares_a_queue_per_layer(layer: ValkeyChannelLayer) -> None:
    one, two = await layer.new_channel(), await layer.new_channel()
    assert one.split("!")[0] == two.split("!")[0]
    assert one != two


async def test_new_channel_name_length_limit(layer: ValkeyChannelLayer) -> None:
    # prefix + "." + 32 hex + "!" + 32 hex: 66 characters besides the prefix.
    assert len(await layer.new_channel("p" * 33)) == 99
    with pytest.raises(TypeError, match=NAME_ERROR):
        await layer.new_channel("p" * 34)


@pytest.mark.parametrize("prefix", ["bad prefix", "a!b", "caf\u00e9"])
async def test_new_channel_bad_prefix(layer: ValkeyChannelLayer, prefix: str) -> None:
    with pytest.raises(TypeError):
        await layer.new_channel(prefix)


# --- bad channel names ----------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_send_rejects_bad_channel_names(layer: ValkeyChannelLayer, name: Any) -> None:
    with pytest.raises(TypeError, match=rf"Channel {NAME_ERROR}"):
        await bounded(layer.send(name, VALID_MESSAGE))


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_receive_rejects_bad_channel_names(layer: ValkeyChannelLayer, name: Any) -> None:
    with pytest.raises(TypeError, match=rf"Channel {NAME_ERROR}"):
        await bounded(layer.receive(name))


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_group_add_rejects_bad_channel_names(layer: ValkeyChannelLayer, name: Any) -> None:
    with pytest.raises(TypeError, match=rf"Channel {NAME_ERROR}"):
        await bounded(layer.group_add("group", name))


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_group_discard_rejects_bad_channel_names(
    layer: ValkeyChannelLayer, name: Any
) -> None:
    with pytest.raises(TypeError, match=rf"Channel {NAME_ERROR}"):
        await bounded(layer.group_discard("group", name))


# --- bad group names ------------------------------------------------------------------------


@pytest.mark.parametrize("group", BAD_GROUPS)
async def test_group_add_rejects_bad_group_names(layer: ValkeyChannelLayer, group: Any) -> None:
    with pytest.raises(TypeError, match=rf"Group {NAME_ERROR}"):
        await bounded(layer.group_add(group, "channel"))


@pytest.mark.parametrize("group", BAD_GROUPS)
async def test_group_discard_rejects_bad_group_names(layer: ValkeyChannelLayer, group: Any) -> None:
    with pytest.raises(TypeError, match=rf"Group {NAME_ERROR}"):
        await bounded(layer.group_discard(group, "channel"))


@pytest.mark.parametrize("group", BAD_GROUPS)
async def test_group_size_rejects_bad_group_names(layer: ValkeyChannelLayer, group: Any) -> None:
    with pytest.raises(TypeError, match=rf"Group {NAME_ERROR}"):
        await bounded(layer.group_size(group))


@pytest.mark.parametrize("group", BAD_GROUPS)
async def test_group_send_rejects_bad_group_names(layer: ValkeyChannelLayer, group: Any) -> None:
    with pytest.raises(TypeError, match=rf"Group {NAME_ERROR}"):
        await bounded(layer.group_send(group, VALID_MESSAGE))


# --- bad messages ---------------------------------------------------------------------------

NOT_DICTS: list[Any] = [None, "text", b"bytes", ["type", "x"], [("type", "x")], 5]


@pytest.mark.parametrize("message", NOT_DICTS)
@pytest.mark.parametrize("channel", ["chat", "specific.abc!def"])
async def test_send_rejects_non_dict_messages(
    layer: ValkeyChannelLayer, channel: str, message: Any
) -> None:
    with pytest.raises(TypeError, match=r"^A message must be a dict, got "):
        await bounded(layer.send(channel, message))


@pytest.mark.parametrize("message", NOT_DICTS)
async def test_group_send_rejects_non_dict_messages(
    layer: ValkeyChannelLayer, message: Any
) -> None:
    with pytest.raises(TypeError, match=r"^A message must be a dict, got "):
        await bounded(layer.group_send("group", message))


RESERVED = {"type": "x", "__asgi_channel__": "specific.abc!def"}


@pytest.mark.parametrize("channel", ["chat", "specific.abc!def"])
async def test_send_rejects_the_reserved_key(layer: ValkeyChannelLayer, channel: str) -> None:
    with pytest.raises(ValueError, match=r"may not contain the key '__asgi_channel__'"):
        await bounded(layer.send(channel, dict(RESERVED)))


async def test_group_send_rejects_the_reserved_key(layer: ValkeyChannelLayer) -> None:
    with pytest.raises(ValueError, match=r"may not contain the key '__asgi_channel__'"):
        await bounded(layer.group_send("group", dict(RESERVED)))


async def test_reserved_key_check_leaves_the_message_alone(layer: ValkeyChannelLayer) -> None:
    message = dict(RESERVED)
    with pytest.raises(ValueError, match="__asgi_channel__"):
        await bounded(layer.send("chat", message))
    assert message == RESERVED


# --- process-local channels of someone else ------------------------------------------------


async def test_receive_on_another_layers_local_channel(layer: ValkeyChannelLayer) -> None:
    other = ValkeyChannelLayer(hosts=[DEAD])
    foreign = await other.new_channel()
    with pytest.raises(ValueError, match=re.escape(repr(foreign))):
        await bounded(layer.receive(foreign))


@pytest.mark.parametrize(
    "channel",
    [
        "specific.0123456789abcdef0123456789abcdef!xyz",
        "specific!abc",
        "specific.x!",
    ],
)
async def test_receive_on_a_made_up_local_channel(layer: ValkeyChannelLayer, channel: str) -> None:
    with pytest.raises(ValueError, match=r"process-local channel of another process"):
        await bounded(layer.receive(channel))


async def test_receive_rejects_own_prefix_under_another_layer(layer: ValkeyChannelLayer) -> None:
    # The client prefix must be a whole dotted component ending at the "!", not a suffix.
    spoofed = f"specific.x{layer.client_prefix}!abc"
    with pytest.raises(ValueError, match=re.escape(repr(spoofed))):
        await bounded(layer.receive(spoofed))


@pytest.mark.parametrize(
    ("channel", "process"),
    [
        ("specific.abc123!def", "abc123"),
        ("websocket.specific.abc123!def", "abc123"),  # a prefix with dots of its own
        ("abc123!def", "abc123"),
        ("chat.room", None),
    ],
)
def test_the_process_of_a_channel(channel: str, process: str | None) -> None:
    """The ``client_prefix`` a liveness check looks up in the registry."""
    assert process_of(channel) == process
