from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from usage.invoices import InvoiceError, month_of
from usage.partitions import (
    AHEAD,
    PartitionError,
    ledger_partition_detach,
    ledger_partitions,
    ledger_partitions_ensure,
)


class Command(BaseCommand):
    help = (
        "The ledger's monthly partitions: list them, create this month's and the months "
        "ahead (what the daily beat task does), or detach a past month's for archiving "
        "(its rows stay, as a table of their own, to dump and drop)."
    )

    def add_arguments(self, parser):
        actions = parser.add_subparsers(
            dest="action", required=True, help="list, ensure or detach (each has its --help)"
        )
        actions.add_parser("list", help="each partition with its rows (estimated) and size")
        ensure = actions.add_parser("ensure", help="create this month's and the months ahead")
        ensure.add_argument("--ahead", type=int, default=AHEAD, help=f"default {AHEAD}")
        detach = actions.add_parser("detach", help="detach a past month's partition")
        detach.add_argument("month", metavar="YYYY-MM", help="the month, in UTC")

    def handle(self, *args, action, **options):
        now = timezone.now()
        try:
            if action == "ensure":
                created = ledger_partitions_ensure(now=now, ahead=options["ahead"])
                for name in created:
                    self.stdout.write(f"created {name}")
                if not created:
                    self.stdout.write("Every partition exists already.")
            elif action == "detach":
                name = ledger_partition_detach(month=month_of(options["month"]), now=now)
                self.stdout.write(
                    f"Detached {name}: archive it (pg_dump -t {name}), then DROP TABLE {name}."
                )
            else:
                for partition in ledger_partitions():
                    label = f"{partition.start:%Y-%m}" if partition.start else "default"
                    self.stdout.write(
                        f"{partition.name}  {label}  ~{partition.rows_estimate:,} rows  "
                        f"{partition.bytes / 1e6:,.1f} MB"
                    )
        except (PartitionError, InvoiceError) as exc:
            raise CommandError(str(exc)) from None
