from django.core.management.base import BaseCommand, CommandError

from usage.invoices import InvoiceError, invoice_void
from usage.models import Invoice


class Command(BaseCommand):
    help = "Void a finalized invoice (it stays on record). Run closemonth again to issue its correction."

    def add_arguments(self, parser):
        parser.add_argument("number", help="the invoice number, e.g. TG-2026-000012")
        parser.add_argument(
            "--reason", required=True, help="why it is void; kept on the invoice's record"
        )

    def handle(self, *args, number, reason, **options):
        invoice = Invoice.objects.filter(number=number).first()
        if invoice is None:
            raise CommandError(
                f"No invoice {number}. Numbers look like TG-2026-000012; a team's are on its"
                " Invoices page (/t/SLUG/invoices/), all of them in /admin/usage/invoice/."
            )
        try:
            invoice_void(invoice=invoice, reason=reason)
        except InvoiceError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{number} is void. Run `closemonth {invoice.month:%Y-%m} --team {invoice.team.slug}` "
            f"to issue the corrected invoice."
        )
