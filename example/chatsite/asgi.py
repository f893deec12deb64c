"""ASGI entry point: Django for HTTP, the chat consumer for websockets.

Run it with ``uvicorn chatsite.asgi:application --app-dir example`` (``example/run`` starts two).
"""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.utils.module_loading import import_string

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Set Django up before anything imports models or consumers.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

# Fail at start-up, not at the first websocket, when the channel layer cannot be imported.
import_string(settings.CHANNEL_LAYERS["default"]["BACKEND"])

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
