from django.db import models
from django.utils import timezone

# USD per 1M tokens. Six decimal places keep every per-call cost exact at
# twelve (tokens × price / 10**6), which is what the ledger stores.
PRICE_FIELD = dict(max_digits=14, decimal_places=6, null=True, blank=True)


class Provider(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    base_url = models.CharField(max_length=500)
    # Name of the environment variable holding the provider's secret; the
    # secret itself never enters the database.
    api_key_env = models.CharField(max_length=100, blank=True)
    timeout_s = models.PositiveIntegerField(default=60)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return self.name


class CatalogModel(models.Model):
    class Capability(models.TextChoices):
        CHAT = "chat"
        EMBEDDINGS = "embeddings"
        VISION = "vision"
        TOOLS = "tools"
        JSON = "json"

    # What clients send as "model".
    name = models.CharField(max_length=100, unique=True)
    display_name = models.CharField(max_length=200, blank=True)
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    upstream_id = models.CharField(max_length=200)
    origin = models.CharField(max_length=8, blank=True)
    context_window = models.PositiveIntegerField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Observed output speed in tokens per second, as published.
    output_tokens_per_s = models.PositiveIntegerField(null=True, blank=True)
    capabilities = models.JSONField(default=list)
    # The /v1 endpoints its upstream serves (Endpoint values); empty: from its capabilities.
    endpoints = models.JSONField(default=list, blank=True)
    benchmarks = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return self.name


class ModelPrice(models.Model):
    """A model's prices from `effective_from` until the next row's.

    Rows are only ever added: a price change is a new row, so what past
    calls were charged (stored on each ledger row) is never rewritten. A
    null price means that direction is unpriced and cannot be billed.
    """

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="prices")
    input_per_mtok = models.DecimalField(**PRICE_FIELD)
    cached_input_per_mtok = models.DecimalField(**PRICE_FIELD)
    output_per_mtok = models.DecimalField(**PRICE_FIELD)
    effective_from = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model", "effective_from"], name="modelprice_unique_model_from"
            )
        ]
        ordering = ["model", "-effective_from"]

    def __str__(self):
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"

    def same_prices(self, other):
        return (
            self.input_per_mtok == other.input_per_mtok
            and self.cached_input_per_mtok == other.cached_input_per_mtok
            and self.output_per_mtok == other.output_per_mtok
        )


class Route(models.Model):
    """A name clients may send as "model", resolved to one of its targets.

    Global routes (team is null) come from the catalog; a team's route with
    the same name overrides the global one for that team only.
    """

    class Strategy(models.TextChoices):
        FALLBACK = "fallback"
        WEIGHTED = "weighted"
        CHEAPEST = "cheapest"
        FASTEST = "fastest"

    team = models.ForeignKey(
        "accounts.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="routes"
    )
    name = models.CharField(max_length=100)
    strategy = models.CharField(max_length=16, choices=Strategy.choices, default=Strategy.FALLBACK)
    # Model names, in order of preference.
    targets = models.JSONField(default=list)
    weights = models.JSONField(default=list, blank=True)
    # Benchmark floors, e.g. {"humaneval": 91.0}.
    require = models.JSONField(default=dict, blank=True)
    capabilities = models.JSONField(default=list, blank=True)
    # Seconds a call through this route may spend on all its attempts.
    deadline_s = models.PositiveIntegerField(default=60)
    # Extra passes over the targets once each has failed, with backoff.
    retries = models.PositiveSmallIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="route_unique_team_name"),
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(team__isnull=True),
                name="route_unique_global_name",
            ),
        ]

    def __str__(self):
        return self.name if self.team_id is None else f"{self.team}:{self.name}"


class RouteChange(models.Model):
    """Who changed a route, when, and what it was before and after (null = absent)."""

    team = models.ForeignKey(
        "accounts.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    route_name = models.CharField(max_length=100)
    actor = models.CharField(
        max_length=200, help_text="a user, a management key prefix, or a command"
    )
    at = models.DateTimeField(default=timezone.now)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["team", "route_name", "at"])]

    def __str__(self):
        return f"{self.route_name} by {self.actor} at {self.at:%Y-%m-%d %H:%M}"
