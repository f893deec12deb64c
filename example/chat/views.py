from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse
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
