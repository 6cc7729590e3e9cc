from django.core.management.base import BaseCommand, CommandError

from routing.services import CatalogError, catalog_load


class Command(BaseCommand):
    help = "Upsert providers, models, prices and routes from TOML catalog files (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", metavar="PATH")

    def handle(self, *args, paths, **options):
        for path in paths:
            try:
                result = catalog_load(path=path)
            except CatalogError as exc:
                raise CommandError(str(exc)) from None
            changed = (
                f"; new prices for {', '.join(result.new_prices)}"
                if result.new_prices
                else "; prices unchanged"
            )
            self.stdout.write(
                f"{path}: {result.providers} providers, {result.models} models, {result.routes} routes{changed}"
            )
