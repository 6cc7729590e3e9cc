from celery import shared_task

from usage import services


@shared_task
def inflight_expire():
    return services.inflight_expire()
