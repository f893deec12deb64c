from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render

from .rooms import MAX_ROOM_NAME_LENGTH, is_valid_room_name, server_info

SUGGESTED_ROOMS = ("lobby", "valkey", "random")


def index(request: HttpRequest) -> HttpResponse:
    room = request.GET.get("room", "").strip()
    if room and is_valid_room_name(room):
        return redirect("room", room_name=room)
    return _render_index(request, room, status=400 if room else 200)


def room(request: HttpRequest, room_name: str) -> HttpResponse:
    if not is_valid_room_name(room_name):
        return _render_index(request, room_name, status=400)
    server = server_info(request.scope)
    peers = [
        {
            "url": f"{base}/room/{room_name}/",
            "label": urlsplit(base).netloc,
            "current": urlsplit(base).port == server["port"],
        }
        for base in settings.EXAMPLE_SERVERS
    ]
    return render(
        request,
        "chat/room.html",
        {"room": room_name, "server": server, "peers": peers},
    )


def _render_index(request: HttpRequest, rejected: str, status: int) -> HttpResponse:
    context = {
        "rejected": rejected if status == 400 else "",
        "max_length": MAX_ROOM_NAME_LENGTH,
        "server": server_info(request.scope),
        "suggested": SUGGESTED_ROOMS,
        "servers": settings.EXAMPLE_SERVERS,
    }
    return render(request, "chat/index.html", context, status=status)


async def layer_stats(request: HttpRequest) -> HttpResponse:
    """This process's channel layer counters (``layer.stats()``) as JSON.

    A message that a sender's ``group_send`` skipped for a full channel is counted only in the
    sending process, so whoever checks that a room got everything asks every server. Layers
    without ``stats()`` (channels_redis) answer 404.
    """
    layer = get_channel_layer()
    stats = getattr(layer, "stats", None)
    if stats is None:
        return JsonResponse({"error": f"{type(layer).__name__} keeps no counters"}, status=404)
    counters = stats()
    return JsonResponse({"layer": type(layer).__name__, **dataclasses.asdict(counters)})
