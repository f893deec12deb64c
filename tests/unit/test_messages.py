"""The checks on what users pass to ``send``, ``group_send`` and their bulk forms.

They run before anything is serialized or sent, so a wrong message fails in the caller with
an error that says what is wrong (and, in a bulk send, which message), and nothing of a bulk
send goes out when one of its messages is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from channels_valkey._common.messages import (
    RESERVED_KEY,
    check_message,
    check_messages,
    check_size,
)
from channels_valkey.exceptions import MessageTooLarge


def test_a_dict_is_a_message_and_comes_back_as_it_is() -> None:
    message = {"type": "chat.message", "text": "hi"}
    assert check_message(message) is message
    assert check_message({}) == {}


@pytest.mark.parametrize(
    ("message", "kind"), [([("type", "x")], "list"), ("text", "str"), (None, "NoneType")]
)
def test_anything_else_is_refused_naming_its_type(message: object, kind: str) -> None:
    with pytest.raises(TypeError, match=rf"^A message must be a dict, got {kind}$"):
        check_message(message)


def test_the_key_the_layer_routes_with_is_refused() -> None:
    """The layer puts the local channel's full name under this key; a user's value there
    would send the message to another channel."""
    assert RESERVED_KEY == "__asgi_channel__"  # what channels_redis uses, on the same queues
    with pytest.raises(ValueError, match="__asgi_channel__"):
        check_message({"type": "x", RESERVED_KEY: "specific.other!abc"})


@pytest.mark.parametrize("messages", [[{"type": "a"}, {"type": "b"}], ({"type": "a"},), []])
def test_a_sequence_of_messages_comes_back_as_a_list(messages: Any) -> None:
    checked = check_messages(messages)
    assert checked == list(messages)
    assert type(checked) is list


def generated() -> Iterator[dict[str, Any]]:
    yield {"type": "a"}


@pytest.mark.parametrize(
    ("messages", "kind"),
    [
        ({"type": "a"}, "dict"),  # one message instead of a list of them
        ("messages", "str"),
        (b"messages", "bytes"),
        (generated(), "generator"),
        (None, "NoneType"),
    ],
)
def test_messages_that_are_not_a_sequence_are_refused(messages: object, kind: str) -> None:
    """Text is a sequence too, but never of dicts; a generator could be read only once."""
    with pytest.raises(TypeError, match=rf"^messages must be a list of dicts, got {kind}$"):
        check_messages(messages)


def test_a_wrong_message_in_a_bulk_send_is_named_by_its_position() -> None:
    with pytest.raises(TypeError, match=r"^messages\[2\]: A message must be a dict, got int$"):
        check_messages([{"type": "a"}, {"type": "b"}, 3])
    with pytest.raises(ValueError, match=r"^messages\[0\]: Messages may not contain the key"):
        check_messages([{RESERVED_KEY: "x"}, {"type": "b"}])


def test_a_payload_within_the_limit_passes() -> None:
    payload = b"x" * 100
    assert check_size(payload, 100, "channel 'chat'") is payload
    assert check_size(payload, None, "channel 'chat'") is payload
    assert check_size(b"", 1, "group 'room'") == b""


def test_a_payload_over_the_limit_is_refused_with_target_size_and_limit() -> None:
    with pytest.raises(MessageTooLarge) as caught:
        check_size(b"x" * 101, 100, "group 'room'")
    error = caught.value
    assert (error.target, error.size, error.limit) == ("group 'room'", 101, 100)
    assert "group 'room'" in str(error)
    assert "101 bytes" in str(error)
    assert "(100 bytes)" in str(error)
    assert isinstance(error, ValueError)
