"""The routing pages of the web UI, under /t/<team slug>/."""

from django.urls import path

from routing import views

urlpatterns = [
    path("t/<slug:slug>/models/", views.models, name="models"),
    path("t/<slug:slug>/savings/", views.savings, name="savings"),
]
