from django.urls import path

from ops import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
]

# portal.asgi serves these paths on the handler without browser middleware.
BARE_PATHS = ("/healthz", "/readyz", "/metrics")
