from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from accounts.models import Team
from accounts.services import team_create


class Command(BaseCommand):
    help = "Create a team, and its owner user if new."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--owner", default="", metavar="EMAIL")
        parser.add_argument("--markup", default="0", metavar="PERCENT")

    def handle(self, *args, slug, name, owner, markup, **options):
        if slugify(slug) != slug:
            raise CommandError(
                f"'{slug}' is not a valid slug (lowercase letters, digits and hyphens)."
            )
        if Team.objects.filter(slug=slug).exists():
            raise CommandError(f"A team '{slug}' already exists.")
        try:
            markup_percent = Decimal(markup)
        except InvalidOperation:
            raise CommandError(f"--markup must be a number of percent, not '{markup}'.") from None
        if not markup_percent.is_finite() or markup_percent < 0:
            raise CommandError("--markup must be zero or more.")
        team = team_create(slug=slug, name=name, markup_percent=markup_percent, owner_email=owner)
        self.stdout.write(f"Created team {team.slug} ({team.name}), markup {team.markup_percent}%")
