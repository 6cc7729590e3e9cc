import contextlib
import os
import tempfile
from datetime import UTC, datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError, OperationalError

from accounts.models import Team
from accounts.selectors import team_not_found_message
from portal.progress import Progress
from portal.replica import reports_database
from usage.exports import LEDGER_FIELDS, ledger_csv_lines, ledger_ndjson_lines
from usage.invoices import InvoiceError, month_bounds, month_of
from usage.models import UsageRecord

# The columns, for other systems: the team and key by their public names, every figure the
# ledger holds, money as decimal strings. (A row is one attempt; request_id + attempt is
# unique, the idempotency key for a consumer.)
# How often the terminal's row count is redrawn.
ROWS_PER_UPDATE = 1000


class Command(BaseCommand):
    help = (
        "Write a month's usage ledger (every attempt of every call, with its tokens, prices "
        "charged and cost) as CSV or newline-delimited JSON, for one team or all, streamed "
        "from the database so any size fits."
    )

    def add_arguments(self, parser):
        parser.add_argument("month", metavar="YYYY-MM", help="the month (UTC) to export")
        parser.add_argument("--team", metavar="SLUG", help="only this team (default: every team)")
        parser.add_argument(
            "--format", choices=["csv", "ndjson"], default="csv", help="CSV (default) or NDJSON"
        )
        parser.add_argument(
            "--output",
            metavar="PATH",
            default="-",
            help="the file to write; - for stdout (default)",
        )

    def handle(self, *args, **options):
        try:
            self._export(**options)
        except (OperationalError, InterfaceError) as exc:
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise CommandError(
                f"The database does not answer ({first_line}); check DATABASE_URL and that "
                "PostgreSQL is up, then run the export again. No file was changed."
            ) from None

    def _export(self, *, month, team, format, output, **options):
        try:
            first, after = month_bounds(month_of(month))
        except InvoiceError as exc:
            raise CommandError(str(exc)) from None
        rows = UsageRecord.objects.using(reports_database()).filter(
            created_at__gte=datetime.combine(first, time.min, tzinfo=UTC),
            created_at__lt=datetime.combine(after, time.min, tzinfo=UTC),
        )
        if team:
            found = Team.objects.filter(slug=team).first()
            if found is None:
                raise CommandError(team_not_found_message(slug=team))
            rows = rows.filter(team=found)
        values = rows.order_by("created_at", "id").values_list(*LEDGER_FIELDS.values())
        # Rows counted on stderr, and on a terminal only: stdout may be the export itself.
        meter = Progress(self.stderr, verbosity=options["verbosity"])
        total = rows.count() if meter.live else 0

        def counted(source):
            for done, row in enumerate(source, start=1):
                if done % ROWS_PER_UPDATE == 0:
                    meter.status(f"{month}: {done:,} of {total:,} rows")
                yield row

        lines = (ledger_csv_lines if format == "csv" else ledger_ndjson_lines)(
            counted(values.iterator(chunk_size=5000)), list(LEDGER_FIELDS)
        )
        if output == "-":
            for chunk in lines:
                self.stdout.write(chunk, ending="")
            meter.clear()
            return
        # Written beside the target and renamed over it once whole: a run that fails half-way
        # leaves the previous export as it was, never a truncated one.
        folder = os.path.dirname(os.path.abspath(output))
        try:
            handle, partial = tempfile.mkstemp(prefix=".exportusage-", dir=folder)
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror}.") from None
        try:
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as target:
                for chunk in lines:
                    target.write(chunk)
            os.replace(partial, output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        meter.clear()
        self.stderr.write(f"Wrote {month}'s usage ({format}) to {output}")
