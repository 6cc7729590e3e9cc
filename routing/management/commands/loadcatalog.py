from django.core.management.base import BaseCommand, CommandError

from portal.progress import Progress
from routing.models import CatalogModel
from routing.services import CatalogError, catalog_load


class Command(BaseCommand):
    help = (
        "Upsert providers, models, prices and routes from TOML catalog files (idempotent). "
        "A changed price applies from now on; what past calls were charged never changes."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "paths",
            nargs="+",
            metavar="PATH",
            help="catalog files (TOML), loaded in order; see README, 'Catalog file'",
        )
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="load only into a gateway with no catalog yet (a first start): a restart must "
            "not put back prices or providers an operator has changed since",
        )

    def handle(self, *args, paths, if_empty, **options):
        if if_empty and CatalogModel.objects.exists():
            self.stdout.write(
                "The catalog is already loaded; nothing changed (--if-empty). Run loadcatalog "
                "without it to apply a file."
            )
            return
        meter = Progress(self.stdout, verbosity=options["verbosity"])
        for path in paths:
            try:
                result = catalog_load(
                    path=path,
                    progress=lambda table, done, total, path=path: meter.status(
                        f"{path}: {table}s {done}/{total}"
                    ),
                )
            except CatalogError as exc:
                meter.clear()
                raise CommandError(
                    f"{exc}. Nothing from {path} was loaded; fix the file and run loadcatalog again."
                ) from None
            changed = (
                f"; new prices for {', '.join(result.new_prices)}"
                if result.new_prices
                else "; prices unchanged"
            )
            meter.clear()
            self.stdout.write(
                f"{path}: {result.providers} providers, {result.models} models, {result.routes} routes{changed}"
            )
