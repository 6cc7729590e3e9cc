from django.urls import path

from usage import views

urlpatterns = [
    path("", views.home, name="home"),
    path("t/<slug:slug>/", views.dashboard, name="dashboard"),
    path("t/<slug:slug>/budgets/", views.budgets, name="budgets"),
    path("t/<slug:slug>/invoices/", views.invoices, name="invoices"),
    path("t/<slug:slug>/invoices/<str:month>/", views.invoice_detail, name="invoice"),
    path("t/<slug:slug>/usage/", views.usage_explorer, name="usage-explorer"),
    path("t/<slug:slug>/usage/<str:request_id>/", views.usage_call, name="usage-call"),
]
