from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone

# USD. Twelve decimal places hold any per-call cost exactly (prices carry six,
# divided by 10**6); amounts are rounded to cents only on an invoice.
USD_FIELD = dict(max_digits=24, decimal_places=12)
PRICE_FIELD = dict(max_digits=14, decimal_places=6, null=True, blank=True)


class UsageRecord(models.Model):
    """The ledger: one row per upstream attempt, appended and never edited.

    `request_id` is the id the client saw in `x-request-id`; a call that
    fell back has one row per attempt under the same request id. The unit
    prices charged are copied onto the row, so its cost can always be
    re-derived without the price history. Corrections are new rows.
    """

    class Status(models.TextChoices):
        OK = "ok"
        UPSTREAM_ERROR = "upstream_error"
        TIMEOUT = "timeout"
        CLIENT_CLOSED = "client_closed"
        REFUSED = "refused"
        # Recorded by the sweeper for a call whose worker died mid-call, at
        # attempt SWEPT_ATTEMPT; the call's real rows, if its worker comes
        # back, are added beside it (the sweep row costs nothing).
        INTERRUPTED = "interrupted"

    class Endpoint(models.TextChoices):
        CHAT = "chat", "Chat completions"
        RESPONSES = "responses", "Responses"
        COMPLETIONS = "completions", "Completions"
        EMBEDDINGS = "embeddings", "Embeddings"
        MODERATIONS = "moderations", "Moderations"

    request_id = models.CharField(max_length=64)
    attempt = models.PositiveSmallIntegerField(default=0)
    # No index of its own: every ledger index begins with the team.
    team = models.ForeignKey(
        "accounts.Team", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    endpoint = models.CharField(max_length=16, choices=Endpoint.choices)
    requested_model = models.CharField(max_length=200)
    route = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=100, blank=True)
    provider = models.CharField(max_length=64, blank=True)

    prompt_tokens = models.PositiveIntegerField(default=0)
    # Part of prompt_tokens served from the provider's cache.
    cached_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    # Part of completion_tokens spent on hidden reasoning; already billed there.
    reasoning_tokens = models.PositiveIntegerField(default=0)
    # True when the upstream sent no usage and the gateway counted itself.
    tokens_estimated = models.BooleanField(default=False)

    # Unit prices charged, USD per 1M tokens.
    input_per_mtok = models.DecimalField(**PRICE_FIELD)
    cached_input_per_mtok = models.DecimalField(**PRICE_FIELD)
    output_per_mtok = models.DecimalField(**PRICE_FIELD)
    cost_usd = models.DecimalField(**USD_FIELD, default=0)

    streamed = models.BooleanField(default=False)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error_type = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    # The request's `user` field: the app's own end-user id.
    end_user = models.CharField(max_length=256, blank=True)

    # When the call was received: decides the month it is billed in.
    created_at = models.DateTimeField(default=timezone.now)
    # When the row was written; a row written after its month closed is late usage.
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # Partitioned by month of created_at (usage.partitions): PostgreSQL wants the
        # partition key in every unique constraint, and every row of a call carries the
        # call's created_at, so this still holds each attempt of a request once. The
        # database's primary key is (id, created_at); `id` alone is unique by its sequence.
        constraints = [
            models.UniqueConstraint(
                fields=["request_id", "attempt", "created_at"],
                name="usage_unique_request_attempt",
            )
        ]
        indexes = [
            # The ledger list's keyset order, newest first (usage.api.UsagePagination), all of
            # a team's rows or one key's: walked backwards partition by partition, a page stops
            # after its rows, at any depth.
            models.Index(fields=["team", "created_at", "id"], name="usage_team_created_idx"),
            models.Index(
                fields=["team", "api_key", "created_at", "id"], name="usage_team_key_created_idx"
            ),
            models.Index(fields=["recorded_at"]),
            # The explorer's other orders, paged by keyset at any depth: costliest first, and
            # slowest first with a missing latency as -1 (usage.views.SORTS).
            models.Index(fields=["team", "cost_usd", "id"], name="usage_team_cost_idx"),
            models.Index(
                "team",
                Coalesce("latency_ms", models.Value(-1)),
                "id",
                name="usage_team_latency_idx",
            ),
        ]

    def __str__(self):
        return f"{self.request_id}#{self.attempt} {self.model} {self.status} ${self.cost_usd}"


class MeteredCallQuerySet(models.QuerySet):
    def in_flight(self):
        return self.filter(closed_at__isnull=True)


class MeteredCall(models.Model):
    """One call opened through the meter: its lease while in flight, its journal entry after.

    Written (with the call's budget reservations) before the upstream is
    called, and closed by the statement that appends the call's ledger
    rows. A call left open belongs to a worker that died: once that worker's
    lease (WorkerLease) lapses, or the call outlives its deadline by a
    margin, the sweeper records it as interrupted and releases its
    reservations, so every call reaches the ledger exactly once. Closed
    entries stay (pruned after TOLLGATE_CALL_JOURNAL_DAYS) so `reconcile`
    can check that each finished call has its ledger rows.
    """

    request_id = models.CharField(max_length=64, unique=True)
    # PROTECT, as the ledger's: a key or team deleted while one of its calls is in flight
    # would take the call's record (and its budget reservation) with it, and its ledger
    # write would then fail.
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, on_delete=models.PROTECT, related_name="+"
    )
    endpoint = models.CharField(max_length=16)
    requested_model = models.CharField(max_length=200)
    route = models.CharField(max_length=100, blank=True)
    end_user = models.CharField(max_length=256, blank=True)
    started_at = models.DateTimeField()
    # The worker process serving the call (see WorkerLease).
    worker = models.CharField(max_length=100, blank=True)
    # The call's deadline plus a margin: past it the call is dead whatever its worker says.
    expires_at = models.DateTimeField()
    # What this call reserved (USD, worst case) on each BudgetCounter in
    # counter_ids; released when the call is recorded or swept.
    reserved_usd = models.DecimalField(**USD_FIELD, default=0)
    counter_ids = models.JSONField(default=list, blank=True)
    # Null while in flight; set by the ledger write or the sweeper.
    closed_at = models.DateTimeField(null=True, blank=True)
    swept = models.BooleanField(default=False)

    objects = MeteredCallQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(
                fields=["expires_at"],
                condition=models.Q(closed_at__isnull=True),
                name="meteredcall_in_flight",
            ),
            models.Index(fields=["started_at"], name="meteredcall_started"),
        ]

    def __str__(self):
        return self.request_id


class WorkerLease(models.Model):
    """A gateway process that is alive: it renews its lease every few seconds.

    The calls in flight on a worker whose lease lapsed (killed, frozen, its
    machine gone) are swept within a minute instead of at their deadline.
    """

    worker = models.CharField(max_length=100, unique=True)
    expires_at = models.DateTimeField()

    def __str__(self):
        return self.worker


class Budget(models.Model):
    """A monthly spending limit (calendar month, UTC) for a team, or for one of its keys."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="budgets")
    # Null: the whole team's budget.
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    amount_usd = models.DecimalField(max_digits=16, decimal_places=6)
    # Hard: calls that would not fit are refused. Soft: alerts only.
    hard = models.BooleanField(default=True)
    # Percent of the amount at which alerts fire, once each per month.
    thresholds = models.JSONField(default=list)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "api_key"], name="budget_unique_team_key"),
            models.UniqueConstraint(
                fields=["team"],
                condition=models.Q(api_key__isnull=True),
                name="budget_unique_team_wide",
            ),
        ]

    def __str__(self):
        scope = f"key {self.api_key.prefix}" if self.api_key_id else "team"
        return f"{self.team} {scope} ${self.amount_usd} {'hard' if self.hard else 'soft'}"


class BudgetCounter(models.Model):
    """One budget's spend and open reservations in one month, updated atomically per call.

    spent_usd is the sum of the costs recorded against the budget this
    month; reserved_usd is the worst-case cost of calls still in flight.
    """

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="counters")
    month = models.DateField(help_text="first day of the month, UTC")
    spent_usd = models.DecimalField(**USD_FIELD, default=0)
    reserved_usd = models.DecimalField(**USD_FIELD, default=0)
    # Spend recorded beyond what calls had reserved (an upstream that produced
    # more than the request allowed, a call swept and then finished), and spend
    # already past the limit when the limit was lowered below it. The bound on
    # a hard budget is spent_usd <= limit_usd + carried_usd + overrun_usd;
    # reconcile checks it.
    overrun_usd = models.DecimalField(**USD_FIELD, default=0)
    carried_usd = models.DecimalField(**USD_FIELD, default=0)
    # The budget's terms, refreshed by every reservation, so that one
    # statement can check and reserve without reading the budget again.
    limit_usd = models.DecimalField(max_digits=16, decimal_places=6)
    hard = models.BooleanField()
    thresholds = models.JSONField(default=list)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "month"], name="budgetcounter_unique_month")
        ]


class AlertEvent(models.Model):
    """A budget alert that fired: at most once per budget, month, kind and threshold."""

    class Kind(models.TextChoices):
        THRESHOLD = "threshold"
        FORECAST = "forecast"

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    month = models.DateField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Percent for threshold alerts; 0 for a forecast.
    threshold = models.PositiveSmallIntegerField(default=0)
    spent_usd = models.DecimalField(**USD_FIELD)
    # For forecasts: the projected month-end spend.
    projected_usd = models.DecimalField(**USD_FIELD, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "month", "kind", "threshold"], name="alertevent_once"
            )
        ]
        ordering = ["-created_at"]


class AlertDelivery(models.Model):
    """One attempt-tracked send of an alert to one channel."""

    class Channel(models.TextChoices):
        EMAIL = "email"
        WEBHOOK = "webhook"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    event = models.ForeignKey(AlertEvent, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    target = models.CharField(max_length=500)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)


class DailyUsage(models.Model):
    """The ledger summed per team, key, model, unit prices and UTC day.

    Maintained by usage.rollups from rows recorded up to a high-water mark;
    reports and invoices read these instead of the ledger.
    """

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    model = models.CharField(max_length=100, blank=True)
    input_per_mtok = models.DecimalField(**PRICE_FIELD)
    cached_input_per_mtok = models.DecimalField(**PRICE_FIELD)
    output_per_mtok = models.DecimalField(**PRICE_FIELD)
    day = models.DateField()
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(**USD_FIELD, default=0)
    # The /v1 endpoint the calls were made on (UsageRecord.Endpoint).
    endpoint = models.CharField(max_length=16, default="chat")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "team",
                    "api_key",
                    "endpoint",
                    "model",
                    "input_per_mtok",
                    "cached_input_per_mtok",
                    "output_per_mtok",
                    "day",
                ],
                name="dailyusage_unique_group",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["team", "day"])]


class RollupMark(models.Model):
    """How far the rollups have read the ledger: every row recorded at or before `through`."""

    name = models.CharField(max_length=32, unique=True)
    through = models.DateTimeField()


# Money on an invoice: USD cents.
CENTS_FIELD = dict(max_digits=14, decimal_places=2)


class ClosedMonth(models.Model):
    """A team's month that closemonth has closed, whether or not it had anything to bill:
    usage of it recorded later is late usage for the next invoice."""

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="+")
    month = models.DateField(help_text="first day of the month, UTC")
    closed_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "month"], name="closedmonth_unique")]


class InvoiceSequence(models.Model):
    """Invoice numbers per year, handed out without gaps inside the finalizing transaction."""

    year = models.PositiveSmallIntegerField(unique=True)
    last_number = models.PositiveIntegerField(default=0)


class Invoice(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        FINALIZED = "finalized"
        VOID = "void"

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="invoices")
    month = models.DateField(help_text="first day of the billed month, UTC")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    # Assigned when finalized, e.g. TG-2026-000042; drafts have none.
    number = models.CharField(max_length=32, unique=True, null=True, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    seller = models.JSONField(default=dict)
    customer = models.JSONField(default=dict)
    markup_percent = models.DecimalField(max_digits=7, decimal_places=3, default=0)
    subtotal_usd = models.DecimalField(**CENTS_FIELD, default=0)
    total_usd = models.DecimalField(**CENTS_FIELD, default=0)
    # The ledger as read for this invoice: rows recorded up to this moment.
    usage_through = models.DateTimeField(null=True, blank=True)
    replaces = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    finalized_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["team", "month"],
                condition=~models.Q(status="void"),
                name="invoice_one_live_per_month",
            ),
        ]
        ordering = ["-month", "-id"]

    def __str__(self):
        return self.number or f"draft {self.team} {self.month:%Y-%m}"


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        USAGE = "usage"
        LATE_USAGE = "late_usage"
        MARKUP = "markup"
        ADJUSTMENT = "adjustment"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=300)
    # The month the usage on this line belongs to (its own month, or an earlier one for late usage).
    usage_month = models.DateField(null=True, blank=True)
    model = models.CharField(max_length=100, blank=True)
    # The /v1 endpoint of the usage on this line (UsageRecord.Endpoint); blank on other lines.
    endpoint = models.CharField(max_length=16, blank=True, default="")
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    input_per_mtok = models.DecimalField(**PRICE_FIELD)
    cached_input_per_mtok = models.DecimalField(**PRICE_FIELD)
    output_per_mtok = models.DecimalField(**PRICE_FIELD)
    # Summed from the ledger without rounding; `amount_usd` is it rounded once.
    exact_usd = models.DecimalField(**USD_FIELD)
    amount_usd = models.DecimalField(**CENTS_FIELD)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice", "position"], name="invoiceline_unique_position"
            )
        ]


class InvoiceAdjustment(models.Model):
    """A manual charge (positive) or credit (negative) for a team's month, put on its next invoice."""

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="+")
    month = models.DateField()
    amount_usd = models.DecimalField(**CENTS_FIELD)
    reason = models.CharField(max_length=300)
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    # Set when it lands on a finalized invoice.
    invoice_line = models.OneToOneField(
        InvoiceLine, null=True, blank=True, on_delete=models.PROTECT, related_name="adjustment"
    )


class UsageEventMark(models.Model):
    """A team's usage-event cursor: every ledger row up to (`through`, `through_id`) in
    (recorded_at, id) order has been delivered to its webhook. One delivery runs per team at
    a time (the lease); a failure pauses the team until `retry_at` without moving the cursor,
    so nothing is skipped however long the webhook stays down."""

    team = models.OneToOneField(
        "accounts.Team", on_delete=models.CASCADE, related_name="usage_event_mark"
    )
    through = models.DateTimeField()
    through_id = models.BigIntegerField(default=0)
    # The delivery task holding the team, and until when (a dead worker's lease lapses).
    lease = models.UUIDField(null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    # Consecutive failed deliveries; the next is not tried before retry_at.
    failures = models.PositiveIntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
