from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


class Team(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    # Percent added on top of list price when invoicing, e.g. 5.000 = +5 %.
    markup_percent = models.DecimalField(
        max_digits=7, decimal_places=3, default=Decimal("0"), validators=[MinValueValidator(0)]
    )
    # Slack-compatible incoming webhook for budget alerts; blank = email only.
    alert_webhook_url = models.URLField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.slug


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        BILLING = "billing"
        MEMBER = "member"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="membership_unique_user_team")
        ]

    def __str__(self):
        return f"{self.user} in {self.team} ({self.role})"

    @property
    def can_manage_keys(self):
        return self.role in (self.Role.OWNER, self.Role.ADMIN)


class ApiKey(models.Model):
    """A key an app (inference) or a script (management) presents as a bearer token.

    The secret is `<prefix>_<random>`; only `prefix` (for display and lookup)
    and an HMAC-SHA256 of the whole secret keyed by SECRET_KEY are stored.
    """

    class Kind(models.TextChoices):
        INFERENCE = "inference"
        MANAGEMENT = "management"

    class ManagementRole(models.TextChoices):
        # A management key acts on its team with one of these team roles (Membership.Role).
        ADMIN = "admin"
        BILLING = "billing"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.INFERENCE)
    # Management keys only: the team role the key acts with; inference keys have none ("").
    role = models.CharField(max_length=16, choices=ManagementRole.choices, blank=True, default="")
    prefix = models.CharField(max_length=32, unique=True)
    secret_hash = models.CharField(max_length=64)
    # Model ids and route names this key may call; empty means all.
    allowed_models = models.JSONField(default=list, blank=True)
    # Requests and tokens per minute; null means no limit.
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["team", "created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind="management", role__in=["admin", "billing"])
                | models.Q(kind="inference", role=""),
                name="apikey_role_only_on_management_keys",
            )
        ]

    def __str__(self):
        return f"{self.prefix} ({self.name})"

    def is_active(self, *, now):
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now
