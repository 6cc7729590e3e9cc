from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey, Team
from accounts.selectors import team_not_found_message
from usage.budgets import budget_set


class Command(BaseCommand):
    help = "Set a team's monthly budget in USD (calendar month, UTC), or one key's with --key."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the team's slug")
        parser.add_argument("usd", metavar="USD", help="the monthly budget in USD, e.g. 250.00")
        kind = parser.add_mutually_exclusive_group()
        kind.add_argument(
            "--hard",
            dest="hard",
            action="store_true",
            default=True,
            help="refuse calls that would exceed it (default)",
        )
        kind.add_argument("--soft", dest="hard", action="store_false", help="alert only")
        parser.add_argument(
            "--thresholds", default="50,80,100", help="alert percentages, e.g. 50,80,100"
        )
        parser.add_argument(
            "--key", default=None, metavar="PREFIX", help="a key's budget instead of the team's"
        )

    def handle(self, *args, slug, usd, hard, thresholds, key, **options):
        team = Team.objects.filter(slug=slug).first()
        if team is None:
            raise CommandError(team_not_found_message(slug=slug))
        try:
            amount = Decimal(usd)
        except InvalidOperation:
            raise CommandError(
                f"The budget must be an amount in USD such as 250 or 99.50, not '{usd}'."
            ) from None
        try:
            percents = [int(p) for p in thresholds.split(",") if p.strip()]
        except ValueError:
            raise CommandError("--thresholds must be whole percentages, e.g. 50,80,100.") from None
        api_key = None
        if key:
            api_key = ApiKey.objects.filter(team=team, prefix=key).first()
            if api_key is None:
                raise CommandError(
                    f"No key '{key}' in team '{slug}'. Its keys and their prefixes are on the"
                    f" team's Keys page (/t/{slug}/keys/)."
                )
        try:
            budget = budget_set(
                team=team, amount_usd=amount, hard=hard, thresholds=percents, api_key=api_key
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Budget for {budget}: alerts at {', '.join(f'{t}%' for t in budget.thresholds)}."
        )
