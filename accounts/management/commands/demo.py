import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

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
        parser.add_argument("--host", default=f"http://{host}:{port}")

    def handle(self, *args, host, **options):
        if not settings.DEBUG:
            raise CommandError("The demo team is for local runs only (DEBUG is off).")
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
        self.stdout.write(
            f"""
Tollgate demo is ready.

  Web UI:    {host}/   sign in as {DEMO_EMAIL} / {password}
  API base:  {host}/v1
  API key:   {secret}

  from openai import OpenAI
  client = OpenAI(base_url="{host}/v1", api_key="{secret}")
  client.chat.completions.create(model="deepseek-v4-flash", messages=[{{"role": "user", "content": "Hi"}}])
"""
        )
