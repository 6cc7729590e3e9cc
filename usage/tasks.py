"""Celery tasks: thin wrappers that load by id and call a service."""

from celery import shared_task

from usage import alerts, services


@shared_task
def inflight_expire():
    return services.inflight_expire()


@shared_task
def budget_alerts_check(counter_id):
    return [event.id for event in alerts.budget_alerts_check(counter_id=counter_id)]


@shared_task
def budget_alerts_check_all():
    return alerts.budget_alerts_check_all()


@shared_task
def budget_forecast_all():
    return alerts.budget_forecast_all()


@shared_task(autoretry_for=(alerts.DeliveryFailed,), retry_backoff=30, retry_backoff_max=1800, retry_jitter=True,
             max_retries=6)
def alert_deliver(delivery_id):
    return alerts.alert_deliver(delivery_id=delivery_id).status
