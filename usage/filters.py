"""Filters of the usage ledger, shared by the API, the CSV export and the usage explorer page.

Every filter is validated (django-filter forms): a bad date, status or id is a 400 in
DRF's shape, never a 500. The team is not a filter: callers pass the team's rows in.
"""

from datetime import UTC, datetime, time

import django_filters
from django import forms
from django.db.models import Subquery
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from accounts.selectors import api_key_id_query
from usage.models import UsageRecord

MOMENT_MIN, MOMENT_MAX = datetime(1970, 1, 1), datetime(9000, 1, 1)


class MomentField(forms.Field):
    """An ISO date (midnight UTC) or datetime (naive means UTC)."""

    def to_python(self, value):
        if value in self.empty_values:
            return None
        try:
            moment = parse_datetime(value)
            if moment is None:
                day = parse_date(value)
                moment = datetime.combine(day, time.min) if day is not None else None
        except ValueError:  # well-formed but impossible, e.g. 2026-02-30 or T25:00
            moment = None
        if moment is None:
            raise forms.ValidationError(f"'{value}' is not an ISO date or datetime.")
        moment = timezone.make_aware(moment, UTC) if timezone.is_naive(moment) else moment
        if not MOMENT_MIN <= moment.replace(tzinfo=None) <= MOMENT_MAX:
            # Year 1 or 9999 with an offset cannot even be converted to UTC.
            raise forms.ValidationError(f"'{value}' is outside the years 1970 to 9000.")
        # In UTC: Python takes offsets up to ±23:59, PostgreSQL only up to ±15:59.
        return moment.astimezone(UTC)


class MomentFilter(django_filters.Filter):
    field_class = MomentField


class UsageFilter(django_filters.FilterSet):
    start = MomentFilter(
        field_name="created_at", lookup_expr="gte", label="from (ISO date or datetime, UTC)"
    )
    end = MomentFilter(field_name="created_at", lookup_expr="lt", label="until, exclusive")
    key = django_filters.CharFilter(method="filter_key", max_length=32, label="key prefix")
    model = django_filters.CharFilter(max_length=100, label="serving model")
    requested_model = django_filters.CharFilter(max_length=200)
    endpoint = django_filters.ChoiceFilter(
        choices=UsageRecord.Endpoint.choices, empty_label="Any endpoint"
    )
    route = django_filters.CharFilter(max_length=100)
    status = django_filters.ChoiceFilter(choices=UsageRecord.Status.choices)
    end_user = django_filters.CharFilter(max_length=256)
    request_id = django_filters.CharFilter(max_length=64)

    class Meta:
        model = UsageRecord
        fields = []

    def filter_key(self, queryset, name, value):
        return queryset.filter(api_key_id=key_id(value))


def key_id(prefix: str) -> Subquery:
    """A key's id by its prefix, as a scalar subquery rather than a join: with one key id the
    planner walks the (team, key, created_at, id) index newest first, partition by partition,
    and stops at a page; through a join it reads and sorts every row of the key."""
    return Subquery(api_key_id_query(prefix=prefix))
