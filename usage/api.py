from datetime import UTC, datetime, time

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import require_team
from usage.models import UsageRecord
from usage.selectors import GROUPINGS, usage_rows, usage_summary


class UsageRecordSerializer(serializers.ModelSerializer):
    key = serializers.CharField(source="api_key.prefix", default=None)

    class Meta:
        model = UsageRecord
        fields = [
            "request_id", "attempt", "created_at", "key", "endpoint", "requested_model", "route", "model",
            "provider", "status", "http_status", "error_type", "error_message", "prompt_tokens",
            "cached_tokens", "completion_tokens", "reasoning_tokens", "tokens_estimated",
            "input_per_mtok", "cached_input_per_mtok", "output_per_mtok", "cost_usd", "streamed",
            "latency_ms", "ttft_ms", "end_user",
        ]


class UsageSummarySerializer(serializers.Serializer):
    group = serializers.CharField(help_text="The day, model or key prefix, by group_by")
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=24, decimal_places=12)


def _moment(value: str | None, name: str) -> datetime | None:
    """An ISO date (midnight UTC) or datetime from a query parameter."""
    if not value:
        return None
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise ValidationError({name: f"'{value}' is not an ISO date or datetime."})
        moment = datetime.combine(day, time.min)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, UTC)
    return moment


RANGE_PARAMETERS = [
    OpenApiParameter("start", OpenApiTypes.STR, description="ISO date or datetime, inclusive (UTC)"),
    OpenApiParameter("end", OpenApiTypes.STR, description="ISO date or datetime, exclusive (UTC)"),
]


class UsageListApi(ListAPIView):
    serializer_class = UsageRecordSerializer

    @extend_schema(parameters=[
        *RANGE_PARAMETERS,
        OpenApiParameter("key", OpenApiTypes.STR, description="key prefix"),
        OpenApiParameter("model", OpenApiTypes.STR, description="serving model"),
        OpenApiParameter("status", OpenApiTypes.STR, enum=UsageRecord.Status.values),
    ])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        team = require_team(self.request, self.kwargs["slug"])
        params = self.request.query_params
        status = params.get("status")
        if status and status not in UsageRecord.Status.values:
            raise ValidationError({"status": f"must be one of {', '.join(UsageRecord.Status.values)}"})
        return usage_rows(
            team_id=team.id,
            start=_moment(params.get("start"), "start"),
            end=_moment(params.get("end"), "end"),
            key_prefix=params.get("key"),
            model=params.get("model"),
            status=status,
        )


class UsageSummaryApi(APIView):
    @extend_schema(
        parameters=[*RANGE_PARAMETERS, OpenApiParameter("group_by", OpenApiTypes.STR, enum=list(GROUPINGS))],
        responses=UsageSummarySerializer(many=True),
    )
    def get(self, request, slug):
        team = require_team(request, slug)
        group_by = request.query_params.get("group_by", "day")
        if group_by not in GROUPINGS:
            raise ValidationError({"group_by": f"must be one of {', '.join(GROUPINGS)}"})
        groups = usage_summary(
            team_id=team.id,
            group_by=group_by,
            start=_moment(request.query_params.get("start"), "start"),
            end=_moment(request.query_params.get("end"), "end"),
        )
        data = [{**g, "group": str(g.pop(group_by))} for g in groups]
        return Response(UsageSummarySerializer(data, many=True).data)
