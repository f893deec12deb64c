"""Checks of option values that both layers share, each raising
:class:`~channels_valkey.exceptions.ConfigurationError` naming the option and what it got.
"""

from __future__ import annotations

from channels_valkey.exceptions import ConfigurationError


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise ConfigurationError(f"prefix must be a str, got {type(prefix).__name__}")
    return prefix


def non_negative_int(option: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{option} must be a whole number >= 0, got {value!r}")
    return value


def positive_int(option: str, value: object) -> int:
    """Seconds and counts: fractional values are refused, Valkey's EXPIRE takes whole seconds."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{option} must be a whole number >= 1, got {value!r}")
    return value


def optional_size(option: str, value: object) -> int | None:
    """A number of bytes, or ``None`` for no limit (the default, as channels_redis has none)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(
            f"{option} must be a number of bytes >= 1, or None for no limit; got {value!r}"
        )
    return value


def positive_seconds(option: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigurationError(f"{option} must be a number of seconds > 0, got {value!r}")
    return float(value)
