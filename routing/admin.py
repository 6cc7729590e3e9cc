from django.contrib import admin

from routing.models import CatalogModel, ModelPrice, Provider, Route, RouteChange
from routing.services import route_change_record, route_state


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ["name", "base_url", "api_key_env", "timeout_s"]


class ModelPriceInline(admin.TabularInline):
    model = ModelPrice
    extra = 0
    # Prices are history: add a new row rather than editing a charged one.
    readonly_fields = [
        "input_per_mtok",
        "cached_input_per_mtok",
        "output_per_mtok",
        "effective_from",
    ]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):
    list_display = ["name", "provider", "upstream_id", "context_window"]
    list_filter = ["provider"]
    inlines = [ModelPriceInline]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "input_per_mtok",
        "cached_input_per_mtok",
        "output_per_mtok",
        "effective_from",
    ]

    def has_change_permission(self, request, obj=None):
        return obj is None  # new prices only; past ones were charged


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "strategy", "targets", "deadline_s", "retries"]
    list_filter = ["strategy", "team"]

    def save_model(self, request, obj, form, change):
        before = route_state(Route.objects.filter(pk=obj.pk).first()) if change else None
        super().save_model(request, obj, form, change)
        route_change_record(
            team=obj.team,
            name=obj.name,
            actor=request.user.get_username(),
            before=before,
            after=route_state(obj),
        )

    def delete_model(self, request, obj):
        route_change_record(
            team=obj.team,
            name=obj.name,
            actor=request.user.get_username(),
            before=route_state(obj),
            after=None,
        )
        super().delete_model(request, obj)


@admin.register(RouteChange)
class RouteChangeAdmin(admin.ModelAdmin):
    list_display = ["route_name", "team", "actor", "at"]
    readonly_fields = ["team", "route_name", "actor", "at", "before", "after"]
