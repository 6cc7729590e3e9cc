from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey
from accounts.permissions import (
    AUDIT_READERS,
    BUDGET_MANAGERS,
    KEY_MANAGERS,
    management_key_roles,
    require_team,
)
from accounts.selectors import (
    AUDIT_PAGE,
    api_key_get,
    api_key_list,
    audit_events,
    key_scope_unknown,
    teams_for,
)
from accounts.services import (
    KeyPrincipal,
    api_key_create,
    api_key_revoke,
    team_settings_update,
    usage_webhook_secret_rotate,
    usage_webhook_set,
)


class TeamSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    markup_percent = serializers.DecimalField(max_digits=7, decimal_places=3)


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = [
            "prefix",
            "name",
            "kind",
            "role",
            "allowed_models",
            "rpm_limit",
            "tpm_limit",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
        ]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=ApiKey.Kind.choices, default=ApiKey.Kind.INFERENCE)
    role = serializers.ChoiceField(
        choices=ApiKey.ManagementRole.choices,
        required=False,
        help_text="Management keys only: the team role the key acts with (default admin).",
    )
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, default=list
    )
    # The columns are 32-bit.
    rpm_limit = serializers.IntegerField(
        min_value=1, max_value=2**31 - 1, required=False, allow_null=True
    )
    tpm_limit = serializers.IntegerField(
        min_value=1, max_value=2**31 - 1, required=False, allow_null=True
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("The expiry must be in the future.")
        return value

    def validate(self, attrs):
        if attrs.get("role") and attrs["kind"] != ApiKey.Kind.MANAGEMENT:
            raise serializers.ValidationError({"role": "Only management keys have a role."})
        return attrs


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(help_text="Shown once; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]


class TeamListApi(APIView):
    @extend_schema(responses=TeamSerializer(many=True))
    def get(self, request):
        return Response(TeamSerializer(teams_for(actor=request.user), many=True).data)


class ApiKeyListApi(APIView):
    @extend_schema(responses=ApiKeySerializer(many=True))
    def get(self, request, slug):
        team = require_team(request, slug, KEY_MANAGERS)
        return Response(ApiKeySerializer(api_key_list(team=team), many=True).data)

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def post(self, request, slug):
        team = require_team(request, slug, KEY_MANAGERS)
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data["kind"] == ApiKey.Kind.MANAGEMENT:
            if isinstance(request.user, KeyPrincipal):
                # A leaked management key must not be able to mint more of itself.
                raise PermissionDenied("Management keys can only create inference keys.")
            key_role = data.get("role") or ApiKey.ManagementRole.ADMIN
            if key_role not in management_key_roles(request.team_access[1]):
                raise PermissionDenied(
                    f"Your role in this team ({request.team_access[1]}) cannot issue a "
                    f"{key_role} key: only an owner issues billing keys."
                )
        if unknown := key_scope_unknown(team=team, names=data["allowed_models"]):
            raise ValidationError(
                {"allowed_models": [f"Not a model or route in the catalog: {', '.join(unknown)}."]}
            )
        key, secret = api_key_create(
            team=team,
            name=data["name"],
            kind=data["kind"],
            role=data.get("role", ""),
            allowed_models=data["allowed_models"],
            rpm_limit=data.get("rpm_limit"),
            tpm_limit=data.get("tpm_limit"),
            expires_at=data.get("expires_at"),
            created_by=None if isinstance(request.user, KeyPrincipal) else request.user,
        )
        body = ApiKeySerializer(key).data
        body["secret"] = secret
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyRevokeApi(APIView):
    @extend_schema(request=None, responses=ApiKeySerializer)
    def post(self, request, slug, prefix):
        team = require_team(request, slug, KEY_MANAGERS)
        key = api_key_get(team=team, prefix=prefix)
        if key is None:
            raise NotFound("No such key in this team.")
        return Response(ApiKeySerializer(api_key_revoke(key=key)).data)


class UsageWebhookStatusSerializer(serializers.Serializer):
    """Where a team's usage events stand: delivered through which ledger row, and whether
    deliveries are paused after failures (and until when)."""

    delivered_through = serializers.DateTimeField()
    last_delivered_at = serializers.DateTimeField(allow_null=True)
    failures = serializers.IntegerField()
    retry_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    previous_secret_valid_until = serializers.DateTimeField(allow_null=True)


@extend_schema_field(
    {
        "type": "object",
        "nullable": True,
        "description": "Where the usage events stand; null while no usage webhook is set, "
        "or for a role that may not see it.",
        "properties": {
            "delivered_through": {"type": "string", "format": "date-time"},
            "last_delivered_at": {"type": "string", "format": "date-time", "nullable": True},
            "failures": {"type": "integer"},
            "retry_at": {"type": "string", "format": "date-time", "nullable": True},
            "last_error": {"type": "string"},
            "previous_secret_valid_until": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
            },
        },
    }
)
class UsageWebhookStatusField(serializers.JSONField):
    """UsageWebhookStatusSerializer's data, or null: inline in the schema, since OpenAPI 3.0
    cannot make a referenced object nullable."""


class TeamSettingsSerializer(serializers.Serializer):
    slug = serializers.CharField(read_only=True)
    name = serializers.CharField(max_length=200, required=False)
    markup_percent = serializers.DecimalField(max_digits=7, decimal_places=3, read_only=True)
    alert_webhook_url = serializers.URLField(max_length=500, required=False, allow_blank=True)
    # Each recorded ledger row is POSTed there as an event signed with the secret (usage.events).
    usage_webhook_url = serializers.URLField(max_length=500, required=False, allow_blank=True)
    usage_webhook_secret = serializers.CharField(read_only=True)
    usage_webhook_status = UsageWebhookStatusField(read_only=True)

    def validate_usage_webhook_url(self, value):
        return self.validate_alert_webhook_url(value)

    def validate_alert_webhook_url(self, value):
        from usage.outbound import webhook_url_problem

        if value and (problem := webhook_url_problem(value)):
            raise serializers.ValidationError(problem)
        return value


class TeamSettingsAnswer(TeamSettingsSerializer):
    """The team's settings as answered: the webhooks, their secret and status are null for
    a role that may not see them."""

    alert_webhook_url = serializers.URLField(allow_null=True, read_only=True)
    usage_webhook_url = serializers.URLField(allow_null=True, read_only=True)
    usage_webhook_secret = serializers.CharField(allow_null=True, read_only=True)


class TeamDetailApi(APIView):
    @extend_schema(responses=TeamSettingsAnswer)
    def get(self, request, slug):
        team = require_team(request, slug)
        return Response(_team_settings(team, role=request.team_access[1]))

    @extend_schema(request=TeamSettingsSerializer, responses=TeamSettingsAnswer)
    def patch(self, request, slug):
        # The name is the admins'; the alert webhook belongs with the budgets (finance too).
        team = require_team(request, slug, BUDGET_MANAGERS)
        role = request.team_access[1]
        serializer = TeamSettingsSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "name" in serializer.validated_data and role not in KEY_MANAGERS:
            raise PermissionDenied(f"Your role in this team ({role}) cannot rename it.")
        fields = dict(serializer.validated_data)
        if "usage_webhook_url" in fields:
            team = usage_webhook_set(team=team, url=fields.pop("usage_webhook_url"))
        team = team_settings_update(team=team, **fields)
        return Response(_team_settings(team, role=role))


class UsageWebhookSecretApi(APIView):
    @extend_schema(
        request=None,
        responses=TeamSettingsAnswer,
        description="A new signing secret for the usage webhook. The previous secret signs "
        "too (a second signature in X-Tollgate-Signature) for 24 hours, so the receiver can "
        "switch without refusing events.",
    )
    def post(self, request, slug):
        team = require_team(request, slug, BUDGET_MANAGERS)
        if not team.usage_webhook_url:
            raise ValidationError({"usage_webhook_url": ["Set a usage webhook first."]})
        team = usage_webhook_secret_rotate(team=team)
        return Response(_team_settings(team, role=request.team_access[1]))


def _team_settings(team, *, role) -> dict:
    """The team's settings; the webhooks (a Slack webhook URL is a secret) and the usage
    events' secret and delivery status only for those who manage budgets."""
    from usage.models import UsageEventMark

    data = dict(TeamSettingsSerializer(team).data)
    if role not in BUDGET_MANAGERS:
        data["alert_webhook_url"] = data["usage_webhook_url"] = data["usage_webhook_secret"] = None
        data["usage_webhook_status"] = None
        return data
    mark = UsageEventMark.objects.filter(team=team).first() if team.usage_webhook_url else None
    previous_until = team.usage_webhook_secret_previous_until
    if mark is not None:
        delivery = {
            "delivered_through": mark.through,
            "last_delivered_at": mark.delivered_at,
            "failures": mark.failures,
            "retry_at": mark.retry_at,
            "last_error": mark.last_error,
            "previous_secret_valid_until": (
                previous_until if previous_until and previous_until > timezone.now() else None
            ),
        }
    data["usage_webhook_status"] = UsageWebhookStatusSerializer(delivery).data if mark else None
    return data


class AuditEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    at = serializers.DateTimeField()
    actor = serializers.CharField()
    address = serializers.IPAddressField(allow_null=True)
    action = serializers.CharField()
    target = serializers.CharField()
    changes = serializers.JSONField()


class AuditPageSerializer(serializers.Serializer):
    results = AuditEventSerializer(many=True)
    next_before = serializers.IntegerField(
        allow_null=True, help_text="Pass as `before` for the next (older) page; null at the end."
    )


class AuditLogApi(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "before", int, description="Entries older than this id (the last page's last)."
            )
        ],
        responses=AuditPageSerializer,
        description="The team's audit log, newest first, 50 a page: every change to the team "
        "and its members' sign-ins. Owners only.",
    )
    def get(self, request, slug):
        team = require_team(request, slug, AUDIT_READERS)
        before = request.query_params.get("before")
        if before is not None and not before.isdigit():
            raise ValidationError({"before": ["An entry id (a whole number)."]})
        events = audit_events(team=team, before_id=int(before) if before else None)
        return Response(
            {
                "results": AuditEventSerializer(events, many=True).data,
                "next_before": events[-1].id if len(events) == AUDIT_PAGE else None,
            }
        )
