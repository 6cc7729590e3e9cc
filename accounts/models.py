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
    # Where each recorded ledger row is POSTed as a signed event (usage.events); blank = off.
    usage_webhook_url = models.URLField(max_length=500, blank=True)
    # The HMAC-SHA256 key of those events' signatures: shown to the team, never sent.
    usage_webhook_secret = models.CharField(max_length=64, blank=True)
    # After a rotation the previous secret signs too, until this time (usage.events).
    usage_webhook_secret_previous = models.CharField(max_length=64, blank=True)
    usage_webhook_secret_previous_until = models.DateTimeField(null=True, blank=True)
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
    and an HMAC-SHA256 of the whole secret keyed by the key pepper
    (TOLLGATE_KEY_PEPPER, else SECRET_KEY) are stored.
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


class Invitation(models.Model):
    """An invitation, sent by email, to join a team with a role.

    The link carries a random token; only its SHA-256 is stored, so the table alone lets
    nobody join. It can be used once, within its validity, unless revoked; re-inviting an
    address revokes its pending invitation and sends a new one.
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    # Lower-cased; compared with usernames (which are email addresses) ignoring case.
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # At most one open invitation per address and team: a new one replaces it.
            models.UniqueConstraint(
                fields=["team", "email"],
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="invitation_one_open_per_team_email",
            )
        ]

    def __str__(self):
        return f"{self.email} to {self.team} ({self.role})"

    def state(self, *, now) -> str:
        """pending, accepted, revoked or expired."""
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        return "pending" if now < self.expires_at else "expired"


class AuditEvent(models.Model):
    """One change to a team (or a sign-in): who, when, from which address, what changed.

    Append-only: the database refuses to update or delete a row (a trigger, migration
    accounts 0007), whatever the code or an admin tries. Written by accounts.audit.audit.
    """

    # Null for a sign-in, which belongs to a person rather than a team.
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)
    # "owner@acme.test", "key:tgm_ab12cd34" (a management key), or "system:<what>".
    actor = models.CharField(max_length=200)
    address = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=200, blank=True)
    # {field: [before, after]} for a change; other facts for an action.
    changes = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["team", "-id"], name="audit_team_newest"),
            # Sign-ins, by whose account they were for (a team's owners see their members').
            models.Index(
                fields=["target", "-id"],
                condition=models.Q(team__isnull=True),
                name="audit_signin_newest",
            ),
        ]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor} {self.action} {self.target}"
