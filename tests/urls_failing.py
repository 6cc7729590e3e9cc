"""The portal's URLs plus one page that fails, to see what a visitor gets from an error."""

from django.urls import path

from portal import urls as portal_urls


def fail(request, slug):
    raise RuntimeError("a bug in a view")


urlpatterns = [path("t/<slug:slug>/fail/", fail), *portal_urls.urlpatterns]

# The portal's own error handlers, if it names any; Django's defaults otherwise.
for _name in ("handler400", "handler403", "handler404", "handler500"):
    if hasattr(portal_urls, _name):
        globals()[_name] = getattr(portal_urls, _name)
