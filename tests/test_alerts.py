"""Budget alerts fire once per threshold and month, reach owners, admins, billing and the webhook."""

import json
import threading
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.factories import MembershipFactory, UserFactory
from usage import alerts
from usage.budgets import budget_set
from usage.models import AlertDelivery, AlertEvent

pytestmark = pytest.mark.django_db


class Hook:
    """A webhook receiver: a real HTTP server recording what it is sent."""

    def __init__(self, status=200):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _local_webhooks(settings):
    # The receivers here listen on loopback over plain http, which production refuses.
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def hook():
    receiver = Hook()
    yield receiver
    receiver.close()


@pytest.fixture
def staff(team, owner):
    """Owner, admin and billing get alerts; a plain member does not."""
    owner.email = "owner@acme.test"
    owner.save()
    for role, email in (
        ("admin", "admin@acme.test"),
        ("billing", "billing@acme.test"),
        ("member", "dev@acme.test"),
    ):
        MembershipFactory(team=team, role=role, user=UserFactory(username=email))
    return team


def spend(team, key, amount, when, request_id):
    """A call of `amount` USD at `when`, reserved and settled as the proxy does it."""
    from django.utils import timezone

    from tests.factories import spend as metered_spend

    metered_spend(team, key, amount, when, request_id, now=timezone.now())


def check_all(now):
    return alerts.budget_alerts_check_all(now=now)


def test_each_threshold_fires_once_per_month_and_again_next_month(staff, inference_key):
    key, _ = inference_key
    budget_set(team=staff, amount_usd=Decimal("10"), hard=False)
    november = datetime(2026, 11, 10, tzinfo=UTC)

    for i, amount in enumerate(["4", "1.5", "3", "2"]):  # 4, 5.5, 8.5 and 10.5 of 10
        spend(staff, key, amount, november, f"req_nov{i}")
        check_all(november)
        check_all(november)

    assert sorted(
        AlertEvent.objects.filter(month="2026-11-01").values_list("threshold", flat=True)
    ) == [50, 80, 100]

    december = datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC)
    spend(staff, key, "6", december, "req_dec")
    check_all(december)
    assert sorted(
        AlertEvent.objects.filter(month="2026-12-01").values_list("threshold", flat=True)
    ) == [50]
    assert AlertEvent.objects.count() == 4


def test_alert_emails_reach_owner_admin_and_billing_with_the_facts(
    staff, inference_key, mailoutbox
):
    key, _ = inference_key
    budget = budget_set(team=staff, amount_usd=Decimal("10"), thresholds=[80])
    spend(staff, key, "8.5", datetime.now(UTC), "req_1")
    check_all(datetime.now(UTC))

    event = AlertEvent.objects.get(budget=budget)
    for delivery in event.deliveries.all():
        alerts.alert_deliver(delivery_id=delivery.id)

    assert sorted(m.to[0] for m in mailoutbox) == [
        "admin@acme.test",
        "billing@acme.test",
        "owner@acme.test",
    ]
    message = mailoutbox[0]
    assert message.subject == "[Tollgate] Acme has used 80% of its $10 budget"
    assert "has spent $8.50 this month: 85% of its monthly budget of $10" in message.body
    assert "calls that would go over it are refused" in message.body
    assert "<strong>$8.50</strong>" in message.alternatives[0][0]
    assert set(event.deliveries.values_list("status", flat=True)) == {"sent"}


def webhook_alert(team, key, url) -> AlertDelivery:
    """Spend half of a $2 budget with `url` as the team's webhook; return the webhook delivery."""
    team.alert_webhook_url = url
    team.save()
    budget_set(team=team, amount_usd=Decimal("2"), thresholds=[50], hard=False)
    spend(team, key, "1", datetime.now(UTC), "req_1")
    check_all(datetime.now(UTC))
    return AlertDelivery.objects.get(channel="webhook")


def test_webhook_gets_slack_compatible_json(staff, inference_key, hook):
    delivery = webhook_alert(staff, inference_key[0], hook.url)

    alerts.alert_deliver(delivery_id=delivery.id)

    assert len(hook.received) == 1
    assert (
        "Acme has spent $1.00 this month: 50% of its monthly budget of $2"
        in hook.received[0]["text"]
    )
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1)


def test_failed_webhook_is_recorded_and_raised_for_retry(staff, inference_key):
    broken = Hook(status=500)
    try:
        delivery = webhook_alert(staff, inference_key[0], broken.url)

        with pytest.raises(alerts.DeliveryFailed):
            alerts.alert_deliver(delivery_id=delivery.id)
    finally:
        broken.close()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == (
        "failed",
        1,
        "webhook answered HTTP 500",
    )


def test_the_alert_task_retries_with_backoff():
    from usage.tasks import alert_deliver

    assert alert_deliver.autoretry_for == (alerts.DeliveryFailed,)
    assert alert_deliver.retry_backoff and alert_deliver.max_retries == 6


def test_forecast_warns_once_when_the_run_rate_heads_over(staff, inference_key):
    key, _ = inference_key
    budget = budget_set(team=staff, amount_usd=Decimal("100"), thresholds=[90])
    start = datetime(2026, 11, 1, tzinfo=UTC)
    spend(staff, key, "20", start, "req_1")  # $20 in 4 days of a 30-day month: ~$150 projected
    day_four = datetime(2026, 11, 5, tzinfo=UTC)

    first = alerts.budget_forecast(budget=budget, now=day_four)
    again = alerts.budget_forecast(budget=budget, now=datetime(2026, 11, 6, tzinfo=UTC))

    assert first.kind == "forecast" and first.projected_usd == Decimal("150")
    assert again is None and AlertEvent.objects.filter(kind="forecast").count() == 1


def test_no_forecast_when_on_track(staff, inference_key):
    key, _ = inference_key
    budget = budget_set(team=staff, amount_usd=Decimal("100"))
    spend(staff, key, "10", datetime(2026, 11, 1, tzinfo=UTC), "req_1")
    assert alerts.budget_forecast(budget=budget, now=datetime(2026, 11, 15, tzinfo=UTC)) is None


def test_deliveries_stuck_in_pending_are_sent_by_the_periodic_check(
    staff, inference_key, mailoutbox, monkeypatch
):
    from datetime import timedelta

    from portal.celery import app

    monkeypatch.setitem(
        app.conf, "task_always_eager", True
    )  # run the resent task here, not on a worker
    key, _ = inference_key
    budget_set(team=staff, amount_usd=Decimal("10"), thresholds=[50], hard=False)
    spend(staff, key, "6", datetime.now(UTC), "req_1")
    check_all(datetime.now(UTC))  # fires; its deliveries' tasks never ran (no commit in this test)
    assert set(AlertDelivery.objects.values_list("status", flat=True)) == {"pending"}

    check_all(datetime.now(UTC) + timedelta(minutes=11))

    assert set(AlertDelivery.objects.values_list("status", flat=True)) == {"sent"}
    assert len(mailoutbox) == 3


def test_a_team_named_with_markup_and_line_breaks_mails_as_text(staff, inference_key, mailoutbox):
    """Escaped for each medium: the HTML part shows the name as text, and a header never
    holds a line break (no header injection)."""
    staff.name = "<img src=x onerror=alert(1)>\r\nBcc: victim@example.com"
    staff.save()
    key, _ = inference_key
    budget = budget_set(team=staff, amount_usd=Decimal("10"), thresholds=[80])
    spend(staff, key, "8.5", datetime.now(UTC), "req_markup")
    check_all(datetime.now(UTC))
    for delivery in AlertEvent.objects.get(budget=budget).deliveries.all():
        alerts.alert_deliver(delivery_id=delivery.id)

    message = mailoutbox[0]
    html = message.alternatives[0][0]
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "\n" not in message.subject and "\r" not in message.subject
    assert "victim@example.com" not in message.to + message.cc + message.bcc
