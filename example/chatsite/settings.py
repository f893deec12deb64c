"""Settings of the example chat. Everything that varies comes from the environment.

CHANNEL_LAYER_BACKEND  the channel layer class (default: channels_valkey's)
CHANNEL_LAYER_CONFIG   a JSON object of layer options merged into CONFIG, e.g.
                       ``{"capacity": 1000}``, so a run can size the layer for its load
                       without editing this file (``hosts`` comes from VALKEY_URL unless
                       given here)
VALKEY_URL             where the Valkey server is (``example/run`` starts a private one)
EXAMPLE_SERVERS        comma-separated base URLs of all the example's servers, for links
DJANGO_ALLOWED_HOSTS   comma-separated, when serving on more than loopback addresses
"""

import json
import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = [
    host
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if host
]

INSTALLED_APPS = ["channels", "chat"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "chatsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
ASGI_APPLICATION = "chatsite.asgi.application"

# No models, no sessions, no database.
DATABASES: dict[str, dict[str, str]] = {}

USE_TZ = True


def _layer_config() -> dict[str, Any]:
    config: dict[str, Any] = {"hosts": [os.environ.get("VALKEY_URL", "valkey://127.0.0.1:6379/0")]}
    extra = json.loads(os.environ.get("CHANNEL_LAYER_CONFIG") or "{}")
    if not isinstance(extra, dict):
        raise ValueError(f"CHANNEL_LAYER_CONFIG must be a JSON object, got {extra!r}")
    config.update(extra)
    return config


CHANNEL_LAYERS = {
    "default": {
        "BACKEND": os.environ.get(
            "CHANNEL_LAYER_BACKEND", "channels_valkey.core.ValkeyChannelLayer"
        ),
        "CONFIG": _layer_config(),
    }
}

EXAMPLE_SERVERS = [url for url in os.environ.get("EXAMPLE_SERVERS", "").split(",") if url]
