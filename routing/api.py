"""Management API for routes and side-by-side comparisons."""

from dataclasses import asdict

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import KEY_MANAGERS, require_team
from accounts.services import KeyPrincipal
from routing.calls import format_usd
from routing.models import Route, RouteChange
from routing.selectors import (
    global_routes,
    route_changes,
    team_route_get,
    team_routes,
)
from routing.services import (
    ROUTE_FIELDS,
    CatalogError,
    CompareError,
    compare_run,
    route_delete,
    route_fields,
    route_save,
)


def actor_name(request) -> str:
    user = request.user
    return f"key {user.prefix}" if isinstance(user, KeyPrincipal) else user.get_username()


class RouteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scope = serializers.ChoiceField(choices=["global", "team"], read_only=True)
    strategy = serializers.ChoiceField(
        choices=Route.Strategy.choices, default=Route.Strategy.FALLBACK
    )
    targets = serializers.ListField(child=serializers.CharField(max_length=100), min_length=1)
    weights = serializers.ListField(
        child=serializers.IntegerField(min_value=0), required=False, default=list
    )
    require = serializers.DictField(child=serializers.FloatField(), required=False, default=dict)
    capabilities = serializers.ListField(
        child=serializers.CharField(), required=False, default=list
    )
    deadline_s = serializers.IntegerField(min_value=1, max_value=3600, default=60)
    retries = serializers.IntegerField(min_value=0, max_value=5, default=1)


class RouteChangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = RouteChange
        fields = ["route_name", "actor", "at", "before", "after"]


def _route_data(route: Route) -> dict:
    return {
        "name": route.name,
        "scope": "global" if route.team_id is None else "team",
        **{f: getattr(route, f) for f in ROUTE_FIELDS},
    }


def _save(request, team, name, data):
    try:
        fields = route_fields({"name": name, **{k: v for k, v in data.items() if k != "name"}})
        fields.pop("name")
        return route_save(team=team, name=name, fields=fields, actor=actor_name(request))
    except CatalogError as exc:
        raise ValidationError({"detail": str(exc)}) from None


class RouteListApi(APIView):
    @extend_schema(responses=RouteSerializer(many=True))
    def get(self, request, slug):
        """The routes this team's calls see: its own, and the global ones it does not override."""
        team = require_team(request, slug)
        routes = {r.name: r for r in global_routes()}
        routes.update({r.name: r for r in team_routes(team=team)})
        return Response([_route_data(routes[name]) for name in sorted(routes)])

    @extend_schema(request=RouteSerializer, responses={201: RouteSerializer})
    def post(self, request, slug):
        """Create a team route; a global route of the same name is overridden for this team only."""
        team = require_team(request, slug, KEY_MANAGERS)
        serializer = RouteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        name = serializer.validated_data["name"]
        if team_route_get(team=team, name=name) is not None:
            raise ValidationError(
                {"name": "This team already has a route of that name; update it instead."}
            )
        route = _save(request, team, name, serializer.validated_data)
        return Response(_route_data(route), status=status.HTTP_201_CREATED)


class RouteDetailApi(APIView):
    @extend_schema(request=RouteSerializer, responses=RouteSerializer)
    def put(self, request, slug, name):
        team = require_team(request, slug, KEY_MANAGERS)
        serializer = RouteSerializer(data={**request.data, "name": name})
        serializer.is_valid(raise_exception=True)
        return Response(_route_data(_save(request, team, name, serializer.validated_data)))

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, slug, name):
        team = require_team(request, slug, KEY_MANAGERS)
        if not route_delete(team=team, name=name, actor=actor_name(request)):
            raise NotFound(
                "This team has no route of that name (global routes are changed in the catalog)."
            )
        return Response(status=status.HTTP_204_NO_CONTENT)


class RouteChangeListApi(APIView):
    @extend_schema(responses=RouteChangeSerializer(many=True))
    def get(self, request, slug):
        team = require_team(request, slug, KEY_MANAGERS)
        return Response(RouteChangeSerializer(route_changes(team=team), many=True).data)


class CompareRequestSerializer(serializers.Serializer):
    models = serializers.ListField(
        child=serializers.CharField(max_length=100), min_length=1, max_length=8
    )
    messages = serializers.ListField(child=serializers.DictField(), min_length=1)
    max_tokens = serializers.IntegerField(min_value=1, max_value=32000, required=False)
    temperature = serializers.FloatField(min_value=0, max_value=2, required=False)


class CompareResultSerializer(serializers.Serializer):
    model = serializers.CharField()
    ok = serializers.BooleanField()
    answer = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    latency_ms = serializers.IntegerField(allow_null=True)
    cost_usd = serializers.CharField()
    request_id = serializers.CharField()


class CompareApi(APIView):
    @extend_schema(request=CompareRequestSerializer, responses=CompareResultSerializer(many=True))
    def post(self, request, slug):
        """Run one prompt on several models side by side; each call is billed to the team."""
        team = require_team(request, slug, KEY_MANAGERS)
        serializer = CompareRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            results = compare_run(
                team=team,
                models=data["models"],
                messages=data["messages"],
                max_tokens=data.get("max_tokens"),
                temperature=data.get("temperature"),
                actor=actor_name(request),
            )
        except CompareError as exc:
            raise ValidationError({"models": str(exc)}) from None
        rows = [{**asdict(r), "cost_usd": format_usd(r.cost_usd)} for r in results]
        return Response(CompareResultSerializer(rows, many=True).data)
