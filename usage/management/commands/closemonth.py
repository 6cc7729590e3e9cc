from django.core.management.base import BaseCommand, CommandError

from accounts.models import Team
from usage.invoices import InvoiceError, invoices_close_month, month_of


class Command(BaseCommand):
    help = "Build and finalize a finished month's invoices (all teams, or one). Safe to run again."

    def add_arguments(self, parser):
        parser.add_argument("month", metavar="YYYY-MM")
        parser.add_argument("--team", default=None, metavar="SLUG")

    def handle(self, *args, month, team, **options):
        try:
            month = month_of(month)
            target = None
            if team:
                target = Team.objects.filter(slug=team).first()
                if target is None:
                    raise CommandError(f"No team '{team}'.")
            invoices = invoices_close_month(month=month, team=target)
        except InvoiceError as exc:
            raise CommandError(str(exc)) from None
        if not invoices:
            self.stdout.write(f"No usage to invoice for {month:%Y-%m}.")
        for invoice in invoices:
            self.stdout.write(f"{invoice.number}  {invoice.team.slug:20} {invoice.month:%Y-%m}  "
                              f"USD {invoice.total_usd:>12,.2f}  ({len(invoice.lines.all())} lines)")
