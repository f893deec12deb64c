from django.urls import re_path

from . import consumers

# Any room name reaches the consumer, which turns invalid ones away with a reason.
websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room_name>[^/]+)/$", consumers.ChatConsumer.as_asgi()),
]
