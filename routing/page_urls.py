"""The routing pages of the web UI, under /t/<team slug>/."""

from django.urls import path

from routing import views

urlpatterns = [
    path("t/<slug:slug>/models/", views.models, name="models"),
    path("t/<slug:slug>/savings/", views.savings, name="savings"),
    path("t/<slug:slug>/compare/", views.compare, name="compare"),
    path("t/<slug:slug>/routes/", views.routes, name="routes"),
    path("t/<slug:slug>/routes/new/", views.route_create, name="route-create"),
    # Route names are free text (the API takes any): <path:> lets one hold a "/".
    path("t/<slug:slug>/routes/<path:name>/edit/", views.route_edit, name="route-edit"),
    path("t/<slug:slug>/routes/<path:name>/delete/", views.route_remove, name="route-delete"),
]
