from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey, Team
from accounts.selectors import key_scope_unknown, team_not_found_message
from accounts.services import api_key_create, api_key_issue


class Command(BaseCommand):
    help = (
        "Issue an inference key for /v1 (or, with --management, a management key for /api). "
        "The secret is printed alone on the last line and never shown again."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the team's slug")
        parser.add_argument(
            "--name", required=True, help="what the key is for, shown next to its prefix"
        )
        parser.add_argument(
            "--models", default="", help="comma-separated model ids or routes; empty = all"
        )
        parser.add_argument(
            "--budget", default=None, metavar="USD", help="monthly budget for this key"
        )
        parser.add_argument(
            "--rpm",
            type=int,
            default=None,
            metavar="N",
            help="requests per minute (default: no limit)",
        )
        parser.add_argument(
            "--tpm",
            type=int,
            default=None,
            metavar="N",
            help="tokens per minute (default: no limit)",
        )
        parser.add_argument(
            "--management", action="store_true", help="issue a management key instead"
        )
        parser.add_argument(
            "--role",
            choices=ApiKey.ManagementRole.values,
            default=None,
            help="with --management: the team role the key acts with (default admin)",
        )

    def handle(self, *args, slug, name, models, budget, rpm, tpm, management, role, **options):
        team = Team.objects.filter(slug=slug).first()
        if team is None:
            raise CommandError(team_not_found_message(slug=slug))
        if role and not management:
            raise CommandError("--role applies to management keys only (add --management).")
        for label, value in (("--rpm", rpm), ("--tpm", tpm)):
            if value is not None and value < 1:
                raise CommandError(f"{label} must be a positive integer.")
        amount = None
        if budget is not None:
            try:
                amount = Decimal(budget)
            except InvalidOperation:
                raise CommandError(f"--budget must be an amount in USD, not '{budget}'.") from None
            if not amount.is_finite() or amount < 0:
                raise CommandError("--budget must be zero or more.")
        if management:
            if models or amount is not None or rpm is not None or tpm is not None:
                raise CommandError(
                    "--models, --budget, --rpm and --tpm apply to inference keys only."
                )
            key, secret = api_key_create(
                team=team, name=name, kind=ApiKey.Kind.MANAGEMENT, role=role or ""
            )
        else:
            allowed = [m.strip() for m in models.split(",") if m.strip()]
            if unknown := key_scope_unknown(team=team, names=allowed):
                raise CommandError(
                    f"--models: not a model or route in the catalog: {', '.join(unknown)}"
                )
            # The key and its budget are created together, or not at all.
            key, secret = api_key_issue(
                team=team,
                name=name,
                allowed_models=allowed,
                rpm_limit=rpm,
                tpm_limit=tpm,
                budget_usd=amount,
            )
        self.stdout.write(
            f"Issued {key.kind} key {key.prefix} ({key.name}) for team {team.slug}"
            + (f" with the {key.role} role" if key.role else "")
            + (f", hard monthly budget ${amount}." if amount is not None else ".")
        )
        self.stdout.write(secret)
