from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Team
from accounts.selectors import team_not_found_message
from portal.progress import Progress
from usage.exports import invoice_csv, invoice_json, invoice_pdf
from usage.invoices import InvoiceError, month_of
from usage.selectors import invoice_for_month


class Command(BaseCommand):
    help = "Write a team's invoice for a month as CSV, JSON or PDF."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the team's slug")
        parser.add_argument("month", metavar="YYYY-MM", help="the invoice's month")
        parser.add_argument(
            "--format", required=True, choices=["csv", "json", "pdf"], help="the file's format"
        )
        parser.add_argument(
            "--output",
            required=True,
            metavar="PATH",
            help="the file to write (replaced if it exists)",
        )

    def handle(self, *args, slug, month, format, output, **options):
        import json

        team = Team.objects.filter(slug=slug).first()
        if team is None:
            raise CommandError(team_not_found_message(slug=slug))
        try:
            invoice = invoice_for_month(team=team, month=month_of(month))
        except InvoiceError as exc:
            raise CommandError(str(exc)) from None
        if invoice is None:
            raise CommandError(
                f"Team '{slug}' has no invoice for {month}: run `manage.py closemonth {month}`"
                " first (a month without usage has none)."
            )
        # A long invoice's PDF takes a while: say what is happening, on a terminal only.
        meter = Progress(self.stdout, verbosity=options["verbosity"])
        meter.status(f"Writing {invoice.number or 'draft'} ({format}) to {output}…")
        if format == "csv":
            Path(output).write_text(invoice_csv(invoice), encoding="utf-8")
        elif format == "json":
            Path(output).write_text(json.dumps(invoice_json(invoice), indent=2), encoding="utf-8")
        else:
            Path(output).write_bytes(invoice_pdf(invoice))
        meter.clear()
        self.stdout.write(f"Wrote {invoice.number or 'draft'} ({format}) to {output}")
