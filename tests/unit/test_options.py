"""The option checks both layers share: a good value comes back as the layer will use it, a
bad one raises ``ConfigurationError`` naming the option and the value it got.

A misconfigured layer should fail when it is built, with a message that says which setting in
``CHANNEL_LAYERS`` to fix, not later with a ``TypeError`` from deep inside a send.
"""

from __future__ import annotations

import re

import pytest

from channels_valkey._common.options import (
    check_prefix,
    non_negative_int,
    optional_size,
    positive_int,
    positive_seconds,
)
from channels_valkey.exceptions import ConfigurationError

#: Values no numeric option accepts: text, a bool (an int to Python, never meant as one here),
#: and containers.
NOT_NUMBERS: list[object] = ["10", True, False, [1], {"n": 1}, b"1"]


def refused(option: str, value: object) -> re.Pattern[str]:
    """The error names the option and shows the value as given."""
    return re.compile(rf"^{re.escape(option)} must be .*{re.escape(repr(value))}$")


@pytest.mark.parametrize("prefix", ["asgi", "", "app:v2"])
def test_a_prefix_is_any_text(prefix: str) -> None:
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", [b"asgi", None, 1])
def test_a_prefix_that_is_not_text_is_refused_by_type(prefix: object) -> None:
    with pytest.raises(
        ConfigurationError, match=rf"^prefix must be a str, got {type(prefix).__name__}$"
    ):
        check_prefix(prefix)


@pytest.mark.parametrize("value", [0, 1, 10**6])
def test_non_negative_int_takes_zero_and_up(value: int) -> None:
    assert non_negative_int("capacity_of_nothing", value) == value


@pytest.mark.parametrize("value", [-1, 1.0, 0.5, None, *NOT_NUMBERS])
def test_non_negative_int_refuses_the_rest(value: object) -> None:
    with pytest.raises(ConfigurationError, match=refused("some_count", value)):
        non_negative_int("some_count", value)


@pytest.mark.parametrize("value", [1, 60, 86_400])
def test_positive_int_takes_one_and_up(value: int) -> None:
    assert positive_int("expiry", value) == value


@pytest.mark.parametrize("value", [0, -5, 1.5, 60.0, None, *NOT_NUMBERS])
def test_positive_int_refuses_zero_fractions_and_the_rest(value: object) -> None:
    """Whole numbers only: these become EXPIRE seconds, which Valkey takes as integers."""
    with pytest.raises(ConfigurationError, match=refused("expiry", value)):
        positive_int("expiry", value)


@pytest.mark.parametrize("value", [None, 1, 1024 * 1024])
def test_optional_size_takes_none_or_a_number_of_bytes(value: int | None) -> None:
    assert optional_size("max_message_size", value) == value


@pytest.mark.parametrize("value", [0, -1, 1.5, *NOT_NUMBERS])
def test_optional_size_refuses_the_rest_and_says_none_is_allowed(value: object) -> None:
    with pytest.raises(ConfigurationError, match=refused("max_message_size", value)) as caught:
        optional_size("max_message_size", value)
    assert "or None for no limit" in str(caught.value)


@pytest.mark.parametrize(("value", "seconds"), [(1, 1.0), (0.25, 0.25), (3600, 3600.0)])
def test_positive_seconds_takes_whole_and_fractional_seconds_as_a_float(
    value: float, seconds: float
) -> None:
    checked = positive_seconds("socket_timeout", value)
    assert checked == seconds
    assert type(checked) is float


@pytest.mark.parametrize("value", [0, 0.0, -0.5, float("nan"), None, *NOT_NUMBERS])
def test_positive_seconds_refuses_zero_negative_nan_and_the_rest(value: object) -> None:
    """NaN compares false with everything, so ``> 0`` refuses it too."""
    with pytest.raises(ConfigurationError, match=refused("socket_timeout", value)):
        positive_seconds("socket_timeout", value)


def test_a_configuration_error_is_a_value_error() -> None:
    """channels_redis raises ``ValueError`` for bad options; code catching it keeps working."""
    with pytest.raises(ValueError, match="expiry"):
        positive_int("expiry", 0)
