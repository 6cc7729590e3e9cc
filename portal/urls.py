from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import api as accounts_api
from routing import api as routing_api
from usage import api as usage_api

api = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("teams/", accounts_api.TeamListApi.as_view(), name="api-teams"),
    path("teams/<slug:slug>/", accounts_api.TeamDetailApi.as_view(), name="api-team"),
    path(
        "teams/<slug:slug>/usage-webhook/rotate-secret/",
        accounts_api.UsageWebhookSecretApi.as_view(),
        name="api-usage-webhook-rotate",
    ),
    path("teams/<slug:slug>/keys/", accounts_api.ApiKeyListApi.as_view(), name="api-keys"),
    path(
        "teams/<slug:slug>/keys/<str:prefix>/revoke/",
        accounts_api.ApiKeyRevokeApi.as_view(),
        name="api-key-revoke",
    ),
    path("teams/<slug:slug>/usage/", usage_api.UsageListApi.as_view(), name="api-usage"),
    path(
        "teams/<slug:slug>/usage/export/",
        usage_api.UsageExportApi.as_view(),
        name="api-usage-export",
    ),
    path(
        "teams/<slug:slug>/usage/summary/",
        usage_api.UsageSummaryApi.as_view(),
        name="api-usage-summary",
    ),
    path("teams/<slug:slug>/routes/", routing_api.RouteListApi.as_view(), name="api-routes"),
    path(
        "teams/<slug:slug>/routes/changes/",
        routing_api.RouteChangeListApi.as_view(),
        name="api-route-changes",
    ),
    path(
        # A route name may hold "/" (as the pages allow): the rest of the path is the name.
        "teams/<slug:slug>/routes/<path:name>/",
        routing_api.RouteDetailApi.as_view(),
        name="api-route",
    ),
    path("teams/<slug:slug>/compare/", routing_api.CompareApi.as_view(), name="api-compare"),
    path("teams/<slug:slug>/budget/", usage_api.BudgetApi.as_view(), name="api-budget"),
    path("teams/<slug:slug>/alerts/", usage_api.AlertListApi.as_view(), name="api-alerts"),
    path("teams/<slug:slug>/invoices/", usage_api.InvoiceListApi.as_view(), name="api-invoices"),
    path("teams/<slug:slug>/audit/", accounts_api.AuditLogApi.as_view(), name="api-audit"),
    path(
        "teams/<slug:slug>/invoices/<str:month>/",
        usage_api.InvoiceDetailApi.as_view(),
        name="api-invoice",
    ),
]

urlpatterns = [
    path("v1/", include("routing.urls")),
    path("", include("ops.urls")),
    path("api/", include(api)),
    path("admin/", admin.site.urls),
    path("", include("usage.urls")),
    path("", include("routing.page_urls")),
    path("", include("accounts.urls")),
]


# Errors Django answers itself (no view matched, or one failed): JSON in DRF's shape under
# /api, the site's pages elsewhere.
handler400 = "portal.errors.bad_request"
handler403 = "portal.errors.permission_denied"
handler404 = "portal.errors.page_not_found"
handler500 = "portal.errors.server_error"
