from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from accounts.models import Team
from accounts.services import team_create


class Command(BaseCommand):
    help = "Create a team, and its owner user if new."

    def add_arguments(self, parser):
        parser.add_argument(
            "slug", help="the team's short name in URLs and commands: a-z, 0-9 and hyphens"
        )
        parser.add_argument("--name", required=True, help="the team's display name")
        parser.add_argument(
            "--owner",
            default="",
            metavar="EMAIL",
            help="the owner's email; a user is created for it if new",
        )
        parser.add_argument(
            "--markup",
            default="0",
            metavar="PERCENT",
            help="added to the team's usage on invoices, e.g. 15 (default 0)",
        )

    def handle(self, *args, slug, name, owner, markup, **options):
        if slugify(slug) != slug:
            raise CommandError(
                f"'{slug}' is not a valid slug (lowercase letters, digits and hyphens)."
            )
        if Team.objects.filter(slug=slug).exists():
            raise CommandError(
                f"A team '{slug}' already exists; choose another slug, or use issuekey {slug}"
                " to give that team a key."
            )
        try:
            markup_percent = Decimal(markup)
        except InvalidOperation:
            raise CommandError(f"--markup must be a number of percent, not '{markup}'.") from None
        if not markup_percent.is_finite() or markup_percent < 0:
            raise CommandError("--markup must be zero or more.")
        team = team_create(slug=slug, name=name, markup_percent=markup_percent, owner_email=owner)
        self.stdout.write(f"Created team {team.slug} ({team.name}), markup {team.markup_percent}%")
