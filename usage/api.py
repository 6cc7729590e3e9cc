from datetime import datetime

from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import (
    BILLING_READERS,
    BUDGET_MANAGERS,
    USAGE_READERS,
    require_team,
)
from accounts.selectors import api_key_get
from portal.replica import report
from usage.budgets import budget_set
from usage.exports import invoice_csv, invoice_json, invoice_pdf, ledger_csv_lines
from usage.filters import MomentField, UsageFilter
from usage.invoices import InvoiceError, invoice_preview, month_of
from usage.models import AlertEvent, Budget, Invoice, UsageRecord
from usage.months import month_start
from usage.selectors import (
    GROUPINGS,
    invoice_for_month,
    invoice_numbered,
    usage_rows,
    usage_summary,
)


class UsageRecordSerializer(serializers.ModelSerializer):
    key = serializers.CharField(source="api_key.prefix", default=None)

    class Meta:
        model = UsageRecord
        fields = [
            "request_id",
            "attempt",
            "created_at",
            "key",
            "endpoint",
            "requested_model",
            "route",
            "model",
            "provider",
            "status",
            "http_status",
            "error_type",
            "error_message",
            "prompt_tokens",
            "cached_tokens",
            "completion_tokens",
            "reasoning_tokens",
            "tokens_estimated",
            "input_per_mtok",
            "cached_input_per_mtok",
            "output_per_mtok",
            "cost_usd",
            "streamed",
            "latency_ms",
            "ttft_ms",
            "end_user",
        ]


class UsageSummarySerializer(serializers.Serializer):
    group = serializers.CharField(help_text="The day, model or key prefix, by group_by")
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=24, decimal_places=12)


def _moment(value: str | None, name: str) -> datetime | None:
    """An ISO date (midnight UTC) or datetime from a query parameter, as the filters read it."""
    try:
        return MomentField(required=False).clean(value)
    except DjangoValidationError as exc:
        raise ValidationError({name: exc.messages}) from None


RANGE_PARAMETERS = [
    OpenApiParameter(
        "start", OpenApiTypes.STR, description="ISO date or datetime, inclusive (UTC)"
    ),
    OpenApiParameter("end", OpenApiTypes.STR, description="ISO date or datetime, exclusive (UTC)"),
]


# The export takes the list's filters as query parameters (a plain APIView, so the schema
# does not read them from a filter backend).
USAGE_FILTER_PARAMETERS = [
    OpenApiParameter(
        name,
        OpenApiTypes.STR,
        description=str(usage_filter.label or ""),
        enum=[value for value, _ in usage_filter.extra["choices"]]
        if "choices" in usage_filter.extra
        else None,
    )
    for name, usage_filter in UsageFilter.base_filters.items()
]


class UsagePagination(CursorPagination):
    """Keyset pagination, newest first: each page costs the same at any depth, and rows
    arriving meanwhile never shift a page. No total count (it would read every row)."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def paginate_queryset(self, queryset, request, view=None):
        # A cursor is the client's to forge: one whose position is not a time (it decodes,
        # but "p=2026" is no moment) is as invalid as one that does not decode.
        try:
            return super().paginate_queryset(queryset, request, view)
        except (DjangoValidationError, ValueError, OverflowError):
            raise NotFound(self.invalid_cursor_message) from None


class UsageListApi(ListAPIView):
    """The team's ledger, one row per upstream attempt, filtered and paginated by keyset."""

    serializer_class = UsageRecordSerializer
    pagination_class = UsagePagination
    filter_backends = [DjangoFilterBackend]
    filterset_class = UsageFilter
    # Only the schema reads this (the filters' types); requests go through get_queryset,
    # which scopes the rows to the caller's team.
    queryset = UsageRecord.objects.none()

    def get_queryset(self):
        team = require_team(self.request, self.kwargs["slug"])
        return usage_rows(team_id=team.id)


# The export's columns, named as the API names them, and where each comes from.
EXPORT_FIELDS = list(UsageRecordSerializer.Meta.fields)
EXPORT_SOURCES = {name: name for name in EXPORT_FIELDS} | {"key": "api_key__prefix"}


class UsageExportApi(APIView):
    """The filtered ledger as CSV, streamed: exactly the rows the same filters list."""

    @extend_schema(
        parameters=USAGE_FILTER_PARAMETERS, responses={(200, "text/csv"): OpenApiTypes.STR}
    )
    def get(self, request, slug):
        team = require_team(request, slug)
        filterset = UsageFilter(request.query_params, queryset=usage_rows(team_id=team.id))
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        rows = filterset.qs.values_list(*[EXPORT_SOURCES[name] for name in EXPORT_FIELDS])
        lines = ledger_csv_lines(rows.iterator(chunk_size=2000), EXPORT_FIELDS)
        response = StreamingHttpResponse(
            _async_chunks(lines) if isinstance(request._request, ASGIRequest) else lines,
            content_type="text/csv",
        )
        response["Content-Disposition"] = f'attachment; filename="{team.slug}-usage.csv"'
        return response


async def _async_chunks(chunks):
    """A sync generator's chunks for an ASGI server, each read in the request's own sync
    thread (its database connection holds the cursor): Django would otherwise read the whole
    export into memory before sending a byte."""
    chunks = iter(chunks)
    done = object()
    read = sync_to_async(lambda: next(chunks, done), thread_sensitive=True)
    while (chunk := await read()) is not done:
        yield chunk


class UsageSummaryApi(APIView):
    @extend_schema(
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter("group_by", OpenApiTypes.STR, enum=list(GROUPINGS)),
            OpenApiParameter(
                "endpoint",
                OpenApiTypes.STR,
                enum=UsageRecord.Endpoint.values,
                description="Only the calls made on this /v1 endpoint.",
            ),
        ],
        responses=UsageSummarySerializer(many=True),
    )
    @report
    def get(self, request, slug):
        team = require_team(request, slug)
        group_by = request.query_params.get("group_by", "day")
        if group_by not in GROUPINGS:
            raise ValidationError({"group_by": f"must be one of {', '.join(GROUPINGS)}"})
        endpoint = request.query_params.get("endpoint")
        if endpoint is not None and endpoint not in UsageRecord.Endpoint.values:
            raise ValidationError(
                {"endpoint": f"must be one of {', '.join(UsageRecord.Endpoint.values)}"}
            )
        groups = usage_summary(
            team_id=team.id,
            group_by=group_by,
            start=_moment(request.query_params.get("start"), "start"),
            end=_moment(request.query_params.get("end"), "end"),
            endpoint=endpoint,
        )
        data = [{**g, "group": str(g.pop(group_by))} for g in groups]
        return Response(UsageSummarySerializer(data, many=True).data)


class BudgetSerializer(serializers.Serializer):
    amount_usd = serializers.DecimalField(max_digits=16, decimal_places=6, min_value=0)
    hard = serializers.BooleanField(default=True)
    # At most ten, as on the budgets page: each threshold is an alert to every recipient.
    thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000),
        default=[50, 80, 100],
        min_length=1,
        max_length=10,
    )
    key = serializers.CharField(read_only=True, allow_null=True)
    month_spent_usd = serializers.DecimalField(max_digits=24, decimal_places=12, read_only=True)
    month_reserved_usd = serializers.DecimalField(max_digits=24, decimal_places=12, read_only=True)


def _budget_data(budget) -> dict:

    counter = budget.counters.filter(month=month_start(timezone.now()).date()).first()
    return {
        "amount_usd": budget.amount_usd,
        "hard": budget.hard,
        "thresholds": budget.thresholds,
        "key": budget.api_key.prefix if budget.api_key_id else None,
        "month_spent_usd": counter.spent_usd if counter else 0,
        "month_reserved_usd": counter.reserved_usd if counter else 0,
    }


class BudgetApi(APIView):
    """The team's monthly budget, or a key's (`?key=PREFIX`)."""

    def _target(self, request, slug, roles):

        team = require_team(request, slug, roles)
        prefix = request.query_params.get("key")
        key = None
        if prefix:
            key = api_key_get(team=team, prefix=prefix)
            if key is None:
                raise NotFound("No such key in this team.")
        return team, key

    @extend_schema(
        parameters=[OpenApiParameter("key", OpenApiTypes.STR)], responses=BudgetSerializer
    )
    def get(self, request, slug):

        team, key = self._target(request, slug, USAGE_READERS)
        budget = Budget.objects.filter(team=team, api_key=key).first()
        if budget is None:
            raise NotFound("No budget is set.")
        return Response(BudgetSerializer(_budget_data(budget)).data)

    @extend_schema(
        parameters=[OpenApiParameter("key", OpenApiTypes.STR)],
        request=BudgetSerializer,
        responses=BudgetSerializer,
    )
    def put(self, request, slug):

        team, key = self._target(request, slug, BUDGET_MANAGERS)
        serializer = BudgetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        budget = budget_set(team=team, api_key=key, **serializer.validated_data)
        return Response(BudgetSerializer(_budget_data(budget)).data)


class AlertDeliverySerializer(serializers.Serializer):
    channel = serializers.CharField()
    target = serializers.CharField()
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    sent_at = serializers.DateTimeField(allow_null=True)


class AlertEventSerializer(serializers.Serializer):
    kind = serializers.CharField()
    threshold = serializers.IntegerField()
    month = serializers.DateField()
    key = serializers.CharField(source="budget.api_key.prefix", default=None)
    spent_usd = serializers.DecimalField(max_digits=24, decimal_places=12)
    projected_usd = serializers.DecimalField(max_digits=24, decimal_places=12, allow_null=True)
    created_at = serializers.DateTimeField()
    deliveries = AlertDeliverySerializer(many=True)


class AlertListApi(APIView):
    """The team's budget alerts and where they went (webhook URLs and addresses): for those
    who manage budgets, as the budgets page is."""

    @extend_schema(responses=AlertEventSerializer(many=True))
    def get(self, request, slug):

        team = require_team(request, slug, BUDGET_MANAGERS)
        events = (
            AlertEvent.objects.filter(budget__team=team)
            .select_related("budget__api_key")
            .prefetch_related("deliveries")[:100]
        )
        return Response(AlertEventSerializer(events, many=True).data)


class InvoiceSummarySerializer(serializers.Serializer):
    number = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    month = serializers.DateField(format="%Y-%m")
    total_usd = serializers.DecimalField(max_digits=14, decimal_places=2)
    finalized_at = serializers.DateTimeField(allow_null=True)


class InvoiceListApi(APIView):
    @extend_schema(responses=InvoiceSummarySerializer(many=True))
    def get(self, request, slug):

        team = require_team(request, slug, BILLING_READERS)
        return Response(
            InvoiceSummarySerializer(Invoice.objects.filter(team=team)[:120], many=True).data
        )


class InvoiceDetailApi(APIView):
    """One month's invoice: JSON by default, or `?format=csv|pdf` to download.
    `?preview=1` builds a draft for a month not yet closed; `?number=` names one of the
    month's invoices, a voided one included."""

    @extend_schema(
        parameters=[
            OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv", "pdf"]),
            OpenApiParameter("preview", OpenApiTypes.BOOL),
            OpenApiParameter("number", OpenApiTypes.STR),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request, slug, month):

        team = require_team(request, slug, BILLING_READERS)
        try:
            month_date = month_of(month)
        except InvoiceError as exc:
            raise ValidationError({"month": str(exc)}) from None
        if number := request.query_params.get("number"):
            invoice = invoice_numbered(team=team, month=month_date, number=number)
        elif request.query_params.get("preview") in ("1", "true"):
            invoice = invoice_preview(team=team, month=month_date)
        else:
            invoice = invoice_for_month(team=team, month=month_date)
        if invoice is None:
            raise NotFound(f"No invoice for {month}: it is not closed yet, or it had no usage.")
        kind = request.query_params.get("format", "json")
        name = f"{invoice.number or 'draft-' + team.slug + '-' + month}"
        if kind == "csv":
            response = HttpResponse(invoice_csv(invoice), content_type="text/csv")
        elif kind == "pdf":
            response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
        elif kind == "json":
            return Response(invoice_json(invoice))
        else:
            raise ValidationError({"format": "must be json, csv or pdf"})
        response["Content-Disposition"] = f'attachment; filename="{name}.{kind}"'
        return response
