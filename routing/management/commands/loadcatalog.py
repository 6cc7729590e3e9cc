from django.core.management.base import BaseCommand, CommandError

from portal.progress import Progress
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

    def handle(self, *args, paths, **options):
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
