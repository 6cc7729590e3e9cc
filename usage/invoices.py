"""Monthly invoices, derived from the daily rollups of the ledger.

One rounding rule, here and only here (`to_cents`): a line's amount is its
exact ledger sum rounded half-up to cents, once; an invoice's total is the
sum of its rounded lines. The markup is its own line, computed on the
exact usage amount and kept at the ledger's 12 decimals, which its cents
are rounded from.

What a month's usage should cost is always `rollup(month)`; what has been
billed for it is the sum of the lines for that month on live (finalized,
not void) invoices. The month's own invoice bills the difference when it
closes; usage of a closed month recorded later is billed on the next
invoice as "late usage for YYYY-MM" — the difference again — so nothing
is lost and nothing is billed twice, and a voided invoice's usage is billed
again by its correction.
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from accounts.audit import audit
from accounts.models import Team
from usage.models import (
    USD_FIELD,
    ClosedMonth,
    DailyUsage,
    Invoice,
    InvoiceAdjustment,
    InvoiceLine,
    InvoiceSequence,
    UsageRecord,
)
from usage.months import next_month_start
from usage.rollups import rollup_advance, rollup_through

CENT = Decimal("0.01")
PRICE_KEYS = ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok")
# What one usage line bills: a model's calls on one endpoint at one set of unit prices.
LINE_KEY = ("model", "endpoint", *PRICE_KEYS)
BILLED_KINDS = (InvoiceLine.Kind.USAGE, InvoiceLine.Kind.LATE_USAGE)
COUNTS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens")
# The ledger's precision (USD_FIELD, 12 decimal places). An exact amount computed here, like the
# markup, is rounded to it before its cents are taken, so the cents are those of the stored value.
EXACT = Decimal(1).scaleb(-USD_FIELD["decimal_places"])


logger = logging.getLogger(__name__)


class InvoiceError(Exception):
    pass


def to_cents(amount: Decimal) -> Decimal:
    """The rounding rule: half-up to cents, applied once per invoice line."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def month_of(value: str) -> date:
    """'2026-11' -> date(2026, 11, 1); raises InvoiceError on anything else."""
    # Exactly four ASCII digits, a dash, two: int() alone would take " 2026", "+2026",
    # "2_026", full-width digits or a trailing newline (which then reaches a file name).
    matched = MONTH.fullmatch(value)
    if matched is None or not 1970 <= int(matched[1]) < 9000:
        raise InvoiceError(f"'{value[:20]}' is not a month; write YYYY-MM (1970 to 8999).")
    try:
        return date(int(matched[1]), int(matched[2]), 1)
    except ValueError:
        raise InvoiceError(f"'{value}' is not a month; write YYYY-MM.") from None


MONTH = re.compile(r"([0-9]{4})-([0-9]{2})", re.ASCII)


def month_bounds(month: date) -> tuple[date, date]:
    """The first day of `month` and of the month after, for day-range filters."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    return month, next_month_start(start).date()


def usage_groups(*, team: Team, month: date) -> dict[tuple, dict]:
    """The month's rolled-up usage per line key (model, endpoint, unit prices)."""
    first, after = month_bounds(month)
    rows = (
        DailyUsage.objects.filter(team=team, day__gte=first, day__lt=after)
        .values(*LINE_KEY)
        .annotate(
            requests=Sum("requests"),
            prompt_tokens=Sum("prompt_tokens"),
            cached_tokens=Sum("cached_tokens"),
            completion_tokens=Sum("completion_tokens"),
            exact=Sum("cost_usd"),
        )
        .order_by("model", "endpoint")
    )
    return {tuple(r[k] for k in LINE_KEY): r for r in rows}


def billed_groups(*, team: Team, month: date, exclude: Invoice | None = None) -> dict[tuple, dict]:
    """What live invoices have billed for the month's usage, per line key."""
    lines = InvoiceLine.objects.filter(
        invoice__team=team,
        invoice__status=Invoice.Status.FINALIZED,
        usage_month=month,
        kind__in=BILLED_KINDS,
    )
    if exclude is not None:
        lines = lines.exclude(invoice=exclude)
    rows = lines.values(*LINE_KEY).annotate(
        requests=Sum("requests"),
        prompt_tokens=Sum("prompt_tokens"),
        cached_tokens=Sum("cached_tokens"),
        completion_tokens=Sum("completion_tokens"),
        exact=Sum("exact_usd"),
    )
    return {tuple(r[k] for k in LINE_KEY): r for r in rows}


def _usd(group: dict | None) -> Decimal:
    # A group's exact USD; a missing group is Decimal zero, never the int 0 (`Decimal("0E-12") or 0`
    # is 0, and an int cannot be rounded to cents).
    if group is None or group["exact"] is None:
        return Decimal(0)
    return group["exact"]


def _count(group: dict | None, name: str) -> int:
    return 0 if group is None or group[name] is None else group[name]


def _unbilled(*, team, month, exclude) -> list[dict]:
    """The month's usage not yet on a live invoice, per line key (model, endpoint, prices).

    A group differs when its USD or any of its counts do: a refused call costs $0 but is a
    request, so it is billed (as $0.00) like any other and counted as billed afterwards.

    Lines issued before they carried an endpoint billed a model's usage at its prices on
    every endpoint at once, under the endpoint of most of it (usage migration 0015). What
    such a line billed beyond its own endpoint's usage is taken off what the model and
    prices owe on the other endpoints: usage is never billed twice, what is left stays
    under the endpoint it was used on, and no line carries negative counts.
    """
    owed = usage_groups(team=team, month=month)
    billed = billed_groups(team=team, month=month, exclude=exclude)
    diffs: dict[tuple, dict] = {}
    for key in sorted(set(owed) | set(billed), key=lambda k: tuple(str(part) for part in k)):
        o, b = owed.get(key), billed.get(key)
        diff = {name: _count(o, name) - _count(b, name) for name in COUNTS}
        diffs[key] = {**dict(zip(LINE_KEY, key)), **diff, "exact": _usd(o) - _usd(b)}
    for key, diff in diffs.items():
        if any(diff[name] < 0 for name in COUNTS):
            _billed_under_another_endpoint(diffs, key)
    return [d for d in diffs.values() if d["exact"] or any(d[name] for name in COUNTS)]


def _billed_under_another_endpoint(diffs: dict[tuple, dict], key: tuple) -> None:
    """Take what `key` billed beyond its own usage (its negative counts, and its USD with
    them) off what its model and prices owe on other endpoints."""
    model, _endpoint, *prices = key
    over = diffs[key]
    others = [d for k, d in diffs.items() if k != key and k[0] == model and list(k[2:]) == prices]
    for name in (*COUNTS, "exact"):
        excess = -over[name]
        for other in others:
            if excess <= 0:
                break
            taken = min(excess, max(other[name], 0))
            other[name] -= taken
            over[name] += taken
            excess -= taken
    if any(over[name] < 0 for name in COUNTS):
        raise InvoiceError(
            f"Invoices billed more {model or 'refused'} calls than the ledger holds for their "
            "month; run reconcile for that month."
        )


def _closed_earlier_months(team: Team, month: date) -> list[date]:
    # Months with a finalized invoice, and months closed with nothing to bill.
    invoiced = Invoice.objects.filter(team=team, status=Invoice.Status.FINALIZED, month__lt=month)
    closed = ClosedMonth.objects.filter(team=team, month__lt=month)
    return sorted(
        set(invoiced.values_list("month", flat=True)) | set(closed.values_list("month", flat=True))
    )


def seller_block() -> dict:
    return dict(settings.TOLLGATE_SELLER)


def customer_block(team: Team) -> dict:
    return {"name": team.name, "account": team.slug}


def invoice_build(*, team: Team, month: date, invoice: Invoice | None = None) -> Invoice | None:
    """(Re)compute a draft invoice's lines from the rollups; None when there is nothing to bill."""
    lines = []
    for group in _unbilled(team=team, month=month, exclude=invoice):
        lines.append(
            _usage_line(
                group,
                InvoiceLine.Kind.USAGE,
                month,
                f"{group['model'] or 'Refused calls'} · {_endpoint_label(group)}",
            )
        )
    for earlier in _closed_earlier_months(team, month):
        for group in _unbilled(team=team, month=earlier, exclude=invoice):
            lines.append(
                _usage_line(
                    group,
                    InvoiceLine.Kind.LATE_USAGE,
                    earlier,
                    f"Late usage for {earlier:%Y-%m}: {group['model'] or 'refused calls'} · "
                    f"{_endpoint_label(group)}",
                )
            )
    usage_exact = sum((line.exact_usd for line in lines), Decimal(0))
    # Adjustments not on a live invoice: new ones, and those of a voided invoice (its correction
    # carries them again; the void invoice keeps its lines as issued).
    # Adjustments of earlier months added after those were closed go on this one.
    pending = Q(invoice_line__isnull=True) | Q(invoice_line__invoice__status=Invoice.Status.VOID)
    late = Q(month__lt=month, invoice_line__isnull=True)
    adjustments = list(
        InvoiceAdjustment.objects.filter((pending & Q(month=month)) | late, team=team).order_by(
            "id"
        )
    )
    if not lines and not adjustments:
        if invoice is not None and invoice.status == Invoice.Status.DRAFT:
            invoice.delete()
        return None
    if team.markup_percent:
        markup = (usage_exact * team.markup_percent / 100).quantize(EXACT, rounding=ROUND_HALF_UP)
        lines.append(
            InvoiceLine(
                kind=InvoiceLine.Kind.MARKUP,
                description=f"Markup {team.markup_percent.normalize():f}%",
                exact_usd=markup,
                amount_usd=to_cents(markup),
            )
        )
    adjusted = []
    for adjustment in adjustments:
        amount = adjustment.amount_usd
        line = InvoiceLine(
            kind=InvoiceLine.Kind.ADJUSTMENT,
            description=adjustment.reason,
            exact_usd=amount,
            amount_usd=to_cents(amount),
        )
        lines.append(line)
        adjusted.append((adjustment, line))

    if invoice is None:
        invoice = Invoice(team=team, month=month)
    invoice.seller, invoice.customer = seller_block(), customer_block(team)
    invoice.markup_percent = team.markup_percent
    invoice.usage_through = rollup_through()
    invoice.subtotal_usd = sum(
        (line.amount_usd for line in lines if line.kind in BILLED_KINDS), Decimal(0)
    )
    invoice.total_usd = sum((line.amount_usd for line in lines), Decimal(0))
    invoice.save()
    invoice.lines.all().delete()
    for position, line in enumerate(lines, start=1):
        line.invoice, line.position = invoice, position
    InvoiceLine.objects.bulk_create(lines)
    # Each adjustment with its own line (reasons need not be unique), linked when finalized.
    invoice._adjusted = adjusted
    return invoice


def _endpoint_label(group: dict) -> str:
    return ENDPOINT_LABELS.get(group["endpoint"], group["endpoint"])


ENDPOINT_LABELS = {value: str(label) for value, label in UsageRecord.Endpoint.choices}


def _usage_line(group: dict, kind: str, usage_month: date, description: str) -> InvoiceLine:
    return InvoiceLine(
        kind=kind,
        description=description,
        usage_month=usage_month,
        model=group["model"],
        endpoint=group["endpoint"],
        requests=group["requests"],
        prompt_tokens=group["prompt_tokens"],
        cached_tokens=group["cached_tokens"],
        completion_tokens=group["completion_tokens"],
        input_per_mtok=group["input_per_mtok"],
        cached_input_per_mtok=group["cached_input_per_mtok"],
        output_per_mtok=group["output_per_mtok"],
        exact_usd=group["exact"],
        amount_usd=to_cents(group["exact"]),
    )


def _live_invoice(team: Team, month: date) -> Invoice | None:
    """The month's non-void invoice, with the team locked so one process builds it at a time."""
    Team.objects.select_for_update().get(id=team.id)
    return (
        Invoice.objects.filter(team=team, month=month).exclude(status=Invoice.Status.VOID).first()
    )


def invoice_preview(*, team: Team, month: date, now: datetime | None = None) -> Invoice | None:
    """A draft for any month, finished or not; never numbered or finalized."""
    now = now or timezone.now()
    rollup_advance(now=now)
    with transaction.atomic():
        live = _live_invoice(team, month)
        if live is not None and live.status == Invoice.Status.FINALIZED:
            return live
        return invoice_build(team=team, month=month, invoice=live)


def invoice_close(*, team: Team, month: date, now: datetime | None = None) -> Invoice | None:
    """Build and finalize the team's invoice for a finished month. Safe to run again: a
    finalized invoice is returned unchanged; a crash half-way leaves nothing behind."""
    now = now or timezone.now()
    _require_over(month, now)
    rollup_advance(now=now)
    return _close(team, month, now)[0]


def _require_over(month: date, now: datetime) -> None:
    if now < next_month_start(datetime(month.year, month.month, 1, tzinfo=UTC)):
        raise InvoiceError(f"{month:%Y-%m} is not over yet; it can only be previewed as a draft.")


def _close(team: Team, month: date, now: datetime) -> tuple[Invoice | None, bool]:
    """The team's finalized invoice for the month (None: nothing to bill), and whether this
    call finalized it. One transaction: on any error nothing of it is kept."""
    with transaction.atomic():
        live = _live_invoice(team, month)
        if live is not None and live.status == Invoice.Status.FINALIZED:
            return live, False
        voided = (
            Invoice.objects.filter(team=team, month=month, status=Invoice.Status.VOID)
            .order_by("-id")
            .first()
        )
        invoice = invoice_build(team=team, month=month, invoice=live)
        ClosedMonth.objects.get_or_create(team=team, month=month, defaults={"closed_at": now})
        if invoice is None:
            return None, False
        invoice.replaces = voided
        return _finalize(invoice, now), True


def _finalize(invoice: Invoice, now: datetime) -> Invoice:
    sequence, _ = InvoiceSequence.objects.select_for_update().get_or_create(year=now.year)
    sequence.last_number += 1
    sequence.save(update_fields=["last_number"])
    invoice.number = f"TG-{now.year}-{sequence.last_number:06d}"
    invoice.status, invoice.finalized_at = Invoice.Status.FINALIZED, now
    invoice.save()
    audit(
        team=invoice.team,
        action="invoice.finalize",
        target=invoice.number,
        changes={"month": f"{invoice.month:%Y-%m}", "total_usd": str(invoice.total_usd)},
    )
    for adjustment, line in getattr(invoice, "_adjusted", []):
        adjustment.invoice_line = line
        adjustment.save(update_fields=["invoice_line"])
    return invoice


@dataclass(frozen=True)
class TeamClose:
    """One team's part in closing a month."""

    team: Team
    # The month's finalized invoice; None when there was nothing to bill or the close failed.
    invoice: Invoice | None = None
    # True when this run finalized it, False when an earlier run had.
    new: bool = False
    # Why the team's close failed (one line); its transaction was rolled back, so a rerun retries.
    error: str = ""


@dataclass
class MonthClose:
    """What closing a month did, team by team."""

    month: date
    teams: list[TeamClose] = field(default_factory=list)

    @property
    def invoices(self) -> list[Invoice]:
        return [t.invoice for t in self.teams if t.invoice is not None]

    @property
    def failures(self) -> list[TeamClose]:
        return [t for t in self.teams if t.error]

    @property
    def ok(self) -> bool:
        return not self.failures


def invoices_close_month(
    *,
    month: date,
    now: datetime | None = None,
    team: Team | None = None,
    progress: Callable[[int, int, TeamClose], None] | None = None,
) -> MonthClose:
    """Close a month for one team or every team with usage, late usage or adjustments.

    Each team is closed in its own transaction. A team that fails is rolled back, logged and
    listed in `failures`, and the others are still closed; running again retries the failed
    ones and leaves finalized invoices as they are. `progress(position, total, outcome)` is
    called after each team.
    """
    now = now or timezone.now()
    _require_over(month, now)
    rollup_advance(now=now)
    if team is not None:
        teams = [team]
    else:
        _, after = month_bounds(month)
        ids = set(
            DailyUsage.objects.filter(day__lt=after).values_list("team_id", flat=True).distinct()
        )
        ids |= set(
            InvoiceAdjustment.objects.filter(
                month__lte=month, invoice_line__isnull=True
            ).values_list("team_id", flat=True)
        )
        teams = list(Team.objects.filter(id__in=ids).order_by("id"))
    result = MonthClose(month=month)
    for position, each in enumerate(teams, start=1):
        try:
            invoice, new = _close(each, month, now)
            outcome = TeamClose(team=each, invoice=invoice, new=new)
        except Exception as exc:  # whatever stops one team must not stop the others
            logger.exception("Closing %s for team %s failed", f"{month:%Y-%m}", each.slug)
            outcome = TeamClose(team=each, error=_one_line(exc))
        result.teams.append(outcome)
        if progress is not None:
            progress(position, len(teams), outcome)
    return result


def _one_line(exc: Exception) -> str:
    message = " ".join(str(exc).split()) or "no message"
    return message if isinstance(exc, InvoiceError) else f"{type(exc).__name__}: {message}"


def invoice_void(*, invoice: Invoice, reason: str, now: datetime | None = None) -> Invoice:
    """Void a finalized invoice; it stays on record. Close the month again to issue its correction."""
    if invoice.status != Invoice.Status.FINALIZED:
        raise InvoiceError("Only a finalized invoice can be voided.")
    if not reason.strip():
        raise InvoiceError("Say why the invoice is voided.")
    invoice.status, invoice.voided_at, invoice.void_reason = (
        Invoice.Status.VOID,
        now or timezone.now(),
        reason,
    )
    with transaction.atomic():
        invoice.save(update_fields=["status", "voided_at", "void_reason"])
        audit(
            team=invoice.team,
            action="invoice.void",
            target=invoice.number,
            changes={"reason": reason},
        )
    return invoice


def adjustment_add(
    *, team: Team, month: date, amount_usd: Decimal, reason: str, created_by: str
) -> InvoiceAdjustment:
    if not reason.strip():
        raise InvoiceError("An adjustment needs a reason.")
    return InvoiceAdjustment.objects.create(
        team=team,
        month=month,
        amount_usd=to_cents(amount_usd),
        reason=reason.strip()[:300],
        created_by=created_by,
    )
