from django.core.management.base import BaseCommand, CommandError

from usage.invoices import InvoiceError, month_of
from usage.reconcile import reconcile_month


class Command(BaseCommand):
    help = "Check that ledger, rollups, reports and invoices agree to the cent; exit 1 on any mismatch."

    def add_arguments(self, parser):
        parser.add_argument("month", metavar="YYYY-MM", help="the month to check, in UTC")

    def handle(self, *args, month, **options):
        try:
            report = reconcile_month(month=month_of(month))
        except InvoiceError as exc:
            raise CommandError(str(exc)) from None
        for note in report.notes:
            self.stdout.write(f"note: {note}")
        for problem in report.problems:
            self.stdout.write(f"MISMATCH: {problem}")
        if not report.ok:
            raise CommandError(
                f"{len(report.problems)} mismatch(es) for {month}, each listed above as MISMATCH."
                " The ledger is the record: an invoice that disagrees with it is voided"
                f" (voidinvoice) and reissued by `closemonth {month}`; a ledger row or rollup"
                " that disagrees is a bug to report with these lines.",
                returncode=1,
            )
        self.stdout.write(f"{month}: ledger, rollups, reports and invoices agree.")
