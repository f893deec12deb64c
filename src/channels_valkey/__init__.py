"""Django Channels channel layers backed by Valkey."""

__version__ = "1.0.0.dev0"
