"""Celery tasks: thin wrappers that load by id and call a service."""

import logging

from celery import shared_task

from usage import alerts, events, metering

logger = logging.getLogger(__name__)


@shared_task
def inflight_sweep():
    return metering.inflight_sweep()


@shared_task
def journal_prune():
    return metering.journal_prune()


@shared_task
def budget_alerts_check(counter_id):
    return [event.id for event in alerts.budget_alerts_check(counter_id=counter_id)]


@shared_task
def budget_alerts_check_all():
    return alerts.budget_alerts_check_all()


@shared_task
def budget_forecast_all():
    return alerts.budget_forecast_all()


@shared_task(
    autoretry_for=(alerts.DeliveryFailed,),
    retry_backoff=30,
    retry_backoff_max=1800,
    retry_jitter=True,
    max_retries=6,
)
def alert_deliver(delivery_id):
    return alerts.alert_deliver(delivery_id=delivery_id).status


@shared_task
def rollup_advance():
    from usage.rollups import rollup_advance as advance

    return advance()


@shared_task
def ledger_partitions_ensure():
    """Create the ledger's partitions for this month and the months ahead (idempotent)."""
    from django.utils import timezone

    from usage import partitions

    return partitions.ledger_partitions_ensure(now=timezone.now())


@shared_task
def invoices_close_due():
    """Close the previous month for every team once its grace period is over (idempotent).

    A team that fails does not stop the others; it is logged, and the next hourly run retries it.
    """
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from usage.invoices import invoices_close_month
    from usage.months import month_start

    now = timezone.now()
    this_month = month_start(now)
    if now - this_month < timedelta(hours=settings.TOLLGATE_INVOICE_GRACE_HOURS):
        return {"invoices": [], "failed": {}}
    previous = month_start(this_month - timedelta(days=1)).date()
    result = invoices_close_month(month=previous, now=now)
    for failure in result.failures:
        logger.error(
            "invoices_close_due: %s for team %s failed: %s",
            f"{previous:%Y-%m}",
            failure.team.slug,
            failure.error,
        )
    return {
        "invoices": [invoice.number for invoice in result.invoices],
        "failed": {failure.team.slug: failure.error for failure in result.failures},
    }


@shared_task
def usage_events_dispatch():
    return events.usage_events_dispatch()


@shared_task
def usage_events_deliver(team_id, lease, until):
    """One team's waiting usage events (routed to the `usage-events` queue, settings)."""
    from datetime import datetime

    return events.usage_events_deliver(
        team_id=team_id, lease=lease, until=datetime.fromisoformat(until)
    )
