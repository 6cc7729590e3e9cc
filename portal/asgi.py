import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

application = get_asgi_application()

if settings.DEBUG:
    # Local runs serve the admin's and the UI's static files themselves.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    application = ASGIStaticFilesHandler(application)

from routing.asgi import with_proxy  # noqa: E402  (needs Django set up)

application = with_proxy(application)
