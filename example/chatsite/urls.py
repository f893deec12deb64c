from chat import views
from django.urls import path

urlpatterns = [
    path("", views.index, name="index"),
    path("room/<str:room_name>/", views.room, name="room"),
    path("stats/", views.layer_stats, name="stats"),
]
