import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

application = get_asgi_application()

if settings.DEBUG:
    # Local runs serve the admin's and the UI's static files themselves.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    application = ASGIStaticFilesHandler(application)

from ops.urls import BARE_PATHS  # noqa: E402  (needs Django set up)
from routing.asgi import with_proxy  # noqa: E402
from routing.cors import CorsForProxy  # noqa: E402
from usage.metering import heartbeat  # noqa: E402

# Probes and scrapes need no session, CSRF or user either: the bare handler serves them.
application = CorsForProxy(with_proxy(application, bare_paths=BARE_PATHS))
# Take this process's lease now, not at its first call: a process restarted after a
# crash sweeps the dead one's calls even if no traffic comes.
heartbeat.worker()
