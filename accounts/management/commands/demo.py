import logging
import os
import secrets
import time
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import ApiKey, Membership, Team
from accounts.services import api_key_create, api_key_revoke, membership_add, team_create

DEMO_SLUG = "demo"
DEMO_EMAIL = "admin@demo.local"
DEMO_KEY_NAME = "demo app"


class Command(BaseCommand):
    help = "Create the demo team if missing, and print a fresh demo API key and the web sign-in."

    def add_arguments(self, parser):
        # `make run` passes the HOST and PORT it serves on, so the printed URL is the real one.
        host = os.environ.get("HOST") or "127.0.0.1"
        port = os.environ.get("PORT") or "8000"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        parser.add_argument(
            "--host",
            default=f"http://{host}:{port}",
            metavar="URL",
            help="the URL printed for the portal (default from HOST and PORT: %(default)s)",
        )

    def handle(self, *args, host, **options):
        if not settings.DEBUG:
            raise CommandError(
                "The demo team is for local runs only (DEBUG is off): run it with DEBUG=1, or"
                " make a real team with createteam and issuekey."
            )
        team = Team.objects.filter(slug=DEMO_SLUG).first() or team_create(
            slug=DEMO_SLUG, name="Demo team"
        )
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=DEMO_EMAIL, defaults={"email": DEMO_EMAIL})
        password = secrets.token_urlsafe(9)
        user.set_password(password)
        user.is_staff = user.is_superuser = True
        user.save()
        membership_add(team=team, user=user, role=Membership.Role.OWNER)
        # Secrets are never stored, so each run issues a new key and retires the last one.
        for old in ApiKey.objects.filter(team=team, name=DEMO_KEY_NAME, revoked_at__isnull=True):
            api_key_revoke(key=old)
        key, secret = api_key_create(team=team, name=DEMO_KEY_NAME)
        # A second team, where the demo admin is a billing member, shows the team switcher
        # and what a billing member sees.
        labs = Team.objects.filter(slug="demo-labs").first() or team_create(
            slug="demo-labs", name="Demo labs"
        )
        if not labs.memberships.filter(user=user).exists():
            membership_add(team=labs, user=user, role=Membership.Role.BILLING)
        seeded = self._seed_usage(team)
        self.stdout.write(
            f"""
Tollgate demo is ready.{seeded}

  Web UI:    {host}/   sign in as {DEMO_EMAIL} / {password}
  API base:  {host}/v1
  API key:   {secret}

  from openai import OpenAI
  client = OpenAI(base_url="{host}/v1", api_key="{secret}")
  client.chat.completions.create(model="deepseek-v4-flash", messages=[{{"role": "user", "content": "Hi"}}])
"""
        )

    def _seed_usage(self, team) -> str:
        """Ninety days of labelled demo traffic through the meter, a budget near its threshold,
        its alerts, and last month's invoice closed; only what is missing is added."""
        from routing.selectors import catalog_changed, catalog_snapshot
        from usage.alerts import budget_alerts_check_all
        from usage.budgets import budget_set
        from usage.demo import (
            DEMO_DAYS,
            DEMO_KEYS,
            demo_budget_amount,
            demo_key_name,
            demo_last_call,
            demo_usage_seed,
        )
        from usage.invoices import InvoiceError, invoice_close
        from usage.months import month_start
        from usage.rollups import LAG
        from usage.selectors import team_budget_status, usage_summary

        began = time.monotonic()
        catalog_changed()
        keys = {}
        for app in DEMO_KEYS:
            name = demo_key_name(app)
            keys[app] = (
                ApiKey.objects.filter(team=team, name=name, revoked_at__isnull=True).first()
                or api_key_create(team=team, name=name, created_by=None)[0]
            )
        now = timezone.now()
        # Thousands of seeded calls: their call log lines would bury the sign-in below.
        calls = logging.getLogger("tollgate.calls")
        level = calls.level
        calls.setLevel(logging.WARNING)
        try:
            written = demo_usage_seed(team=team, keys=keys, catalog=catalog_snapshot(), now=now)
        finally:
            calls.setLevel(level)
        if team_budget_status(team=team, now=now) is None:
            spent = sum(
                (
                    g["cost_usd"]
                    for g in usage_summary(
                        team_id=team.id, group_by="model", start=month_start(now)
                    )
                ),
                start=Decimal(0),
            )
            budget_set(team=team, amount_usd=demo_budget_amount(spent), thresholds=[50, 80, 100])
        budget_alerts_check_all(now=now)
        # Each finished month of demo traffic is invoiced, oldest first, so the invoice
        # numbers run in month order. The rollups fold a row once it is LAG old; every demo
        # row is written by now, so closing as of a LAG from now bills them all.
        as_of = timezone.now() + LAG + timedelta(seconds=1)
        invoices = []
        month = month_start(now - timedelta(days=DEMO_DAYS - 1))
        while month < month_start(now):
            try:
                invoice = invoice_close(team=team, month=month.date(), now=as_of)
            except InvoiceError as exc:  # the month's grace period has not passed yet
                self.stderr.write(f"The demo invoice for {month:%Y-%m} is not closed yet: {exc}")
            else:
                if invoice is not None:
                    invoices.append(invoice.number)
            month = month_start(month + timedelta(days=32))
        # The demo keys were "used" when their last demo call was made.
        for key in keys.values():
            last = demo_last_call(key=key)
            if last is not None and (key.last_used_at is None or key.last_used_at < last):
                ApiKey.objects.filter(id=key.id).update(last_used_at=last)
        took = time.monotonic() - began
        return (
            f"\n  Demo data: {written} new calls seeded in {took:.1f} s (90 days, keys named"
            f" [demo] …), invoices {', '.join(invoices) or 'none yet'}."
        )
