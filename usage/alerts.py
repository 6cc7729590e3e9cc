"""Budget alerts: detect crossings and forecasts, then deliver them by email and webhook.

Every alert is an AlertEvent, unique per (budget, month, kind, threshold),
so it fires once however many workers notice it. Each channel gets an
AlertDelivery whose outcome (sent, failed, attempts, last error) is kept.
"""

import json
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import Membership
from usage.models import AlertDelivery, AlertEvent, Budget, BudgetCounter
from usage.months import month_projection, month_start, next_month_start
from usage.outbound import OutboundFailed, OutboundRefused, webhook_post

ALERT_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN, Membership.Role.BILLING)


class DeliveryFailed(Exception):
    pass


def _fire(
    *, budget: Budget, month, kind: str, threshold: int, spent: Decimal, projected=None
) -> AlertEvent | None:
    """Create the alert and its deliveries, or nothing if it already fired."""
    try:
        with transaction.atomic():
            event = AlertEvent.objects.create(
                budget=budget,
                month=month,
                kind=kind,
                threshold=threshold,
                spent_usd=spent,
                projected_usd=projected,
            )
            deliveries = [
                AlertDelivery(event=event, channel=AlertDelivery.Channel.EMAIL, target=email)
                for email in alert_recipients(budget.team)
            ]
            if budget.team.alert_webhook_url:
                deliveries.append(
                    AlertDelivery(
                        event=event,
                        channel=AlertDelivery.Channel.WEBHOOK,
                        target=budget.team.alert_webhook_url,
                    )
                )
            AlertDelivery.objects.bulk_create(deliveries)
    except IntegrityError:
        return None  # another worker fired it first
    from usage.tasks import alert_deliver

    for delivery in deliveries:
        transaction.on_commit(lambda d=delivery.id: alert_deliver.delay(d))
    return event


def alert_recipients(team) -> list[str]:
    emails = Membership.objects.filter(team=team, role__in=ALERT_ROLES).values_list(
        "user__email", flat=True
    )
    return sorted({e for e in emails if e})


def budget_alerts_check(*, counter_id: int) -> list[AlertEvent]:
    """Fire every threshold this counter's spend has reached and that has not fired this month."""
    counter = (
        BudgetCounter.objects.select_related("budget__team", "budget__api_key")
        .filter(id=counter_id)
        .first()
    )
    if counter is None:
        return []
    budget = counter.budget
    fired = []
    for threshold in budget.thresholds:
        if counter.spent_usd >= budget.amount_usd * threshold / 100 and (
            budget.amount_usd or counter.spent_usd
        ):
            event = _fire(
                budget=budget,
                month=counter.month,
                kind=AlertEvent.Kind.THRESHOLD,
                threshold=threshold,
                spent=counter.spent_usd,
            )
            if event:
                fired.append(event)
    return fired


STUCK_AFTER = timedelta(minutes=10)


def budget_alerts_check_all(*, now: datetime | None = None) -> int:
    """Fire any threshold alert not fired yet this month, and resend deliveries stuck in pending
    (their task was never enqueued, e.g. during a broker outage)."""
    now = now or timezone.now()
    month = month_start(now).date()
    fired = sum(
        len(budget_alerts_check(counter_id=c))
        for c in BudgetCounter.objects.filter(month=month).values_list("id", flat=True)
    )
    from usage.tasks import alert_deliver

    stuck = AlertDelivery.objects.filter(
        status=AlertDelivery.Status.PENDING, attempts=0, event__created_at__lt=now - STUCK_AFTER
    )
    for delivery_id in stuck.values_list("id", flat=True):
        alert_deliver.delay(delivery_id)
    return fired


def budget_forecast(*, budget: Budget, now: datetime) -> AlertEvent | None:
    """Warn once a month when the run rate so far projects a month-end spend over the budget."""
    start = month_start(now)
    counter = BudgetCounter.objects.filter(budget=budget, month=start.date()).first()
    if counter is None or not counter.spent_usd:
        return None
    projected = month_projection(counter.spent_usd, now)
    if projected <= budget.amount_usd or counter.spent_usd >= budget.amount_usd:
        return None
    return _fire(
        budget=budget,
        month=start.date(),
        kind=AlertEvent.Kind.FORECAST,
        threshold=0,
        spent=counter.spent_usd,
        projected=projected,
    )


def budget_forecast_all(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    return sum(
        1
        for b in Budget.objects.select_related("team", "api_key")
        if budget_forecast(budget=b, now=now)
    )


def alert_context(event: AlertEvent) -> dict:
    budget = event.budget
    percent = (event.spent_usd / budget.amount_usd * 100) if budget.amount_usd else Decimal(100)
    return {
        "event": event,
        "team": budget.team,
        "scope": f"key {budget.api_key.prefix} ({budget.api_key.name})"
        if budget.api_key_id
        else "the team",
        "amount": budget.amount_usd.normalize(),
        "spent": event.spent_usd.quantize(Decimal("0.01")),
        "percent": percent.quantize(Decimal("1")),
        "projected": event.projected_usd.quantize(Decimal("0.01")) if event.projected_usd else None,
        "hard": budget.hard,
        "resets": next_month_start(datetime.combine(event.month, time.min, tzinfo=UTC)),
    }


def alert_deliver(*, delivery_id: int) -> AlertDelivery:
    """Send one delivery; raises DeliveryFailed (after recording why) so the task retries."""
    delivery = AlertDelivery.objects.select_related(
        "event__budget__team", "event__budget__api_key"
    ).get(id=delivery_id)
    if delivery.status == AlertDelivery.Status.SENT:
        return delivery
    context = alert_context(delivery.event)
    delivery.attempts += 1
    try:
        if delivery.channel == AlertDelivery.Channel.EMAIL:
            # One line whatever the team is called: a header never holds a line break.
            subject = " ".join(
                render_to_string("usage/email/budget_alert_subject.txt", context).split()
            )
            message = EmailMultiAlternatives(
                subject,
                render_to_string("usage/email/budget_alert_body.txt", context),
                settings.DEFAULT_FROM_EMAIL,
                [delivery.target],
            )
            message.attach_alternative(
                render_to_string("usage/email/budget_alert_body.html", context), "text/html"
            )
            message.send()
        else:
            text = render_to_string("usage/email/budget_alert_body.txt", context).strip()
            status = _post_json(delivery.target, {"text": text}, timeout=10)
            if status >= 300:
                raise DeliveryFailed(f"webhook answered HTTP {status}")
    except Exception as exc:
        delivery.status = AlertDelivery.Status.FAILED
        delivery.last_error = str(exc)[:500]
        delivery.save(update_fields=["status", "attempts", "last_error"])
        raise DeliveryFailed(delivery.last_error) from exc
    delivery.status, delivery.last_error, delivery.sent_at = (
        AlertDelivery.Status.SENT,
        "",
        timezone.now(),
    )
    delivery.save(update_fields=["status", "attempts", "last_error", "sent_at"])
    return delivery


def alert_webhook_test(*, team, now: datetime | None = None) -> int:
    """POST a message marked as a test to the team's webhook at once; the HTTP status it
    answered, or DeliveryFailed saying why not. Nothing is recorded: it is not an alert."""
    if not team.alert_webhook_url:
        raise DeliveryFailed("No webhook is set.")
    now = now or timezone.now()
    text = (
        f"Test from Tollgate for team {team.name} ({team.slug}) at {now:%Y-%m-%d %H:%M} UTC. "
        "Budget alerts will arrive here."
    )
    try:
        status = _post_json(team.alert_webhook_url, {"text": text}, timeout=5)
    except OutboundRefused as refused:
        raise DeliveryFailed(str(refused)) from None
    except OutboundFailed as failed:
        raise DeliveryFailed(f"the webhook {failed}") from None
    if status >= 300:
        raise DeliveryFailed(f"the webhook answered HTTP {status}")
    return status


def _post_json(url: str, payload: dict, *, timeout: float) -> int:
    return webhook_post(
        url,
        content=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        timeout=timeout,
    )
