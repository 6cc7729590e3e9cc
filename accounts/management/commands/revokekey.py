from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey
from accounts.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke a key by its displayed prefix; it stops working at once. Safe to run twice."

    def add_arguments(self, parser):
        parser.add_argument(
            "prefix", help="the key's prefix as the Keys page shows it (tgk_… or tgm_…)"
        )

    def handle(self, *args, prefix, **options):
        key = ApiKey.objects.filter(prefix=prefix).first()
        if key is None:
            raise CommandError(
                f"No key with prefix '{prefix}'. A prefix is the start of the secret up to its"
                " second underscore (tgk_… or tgm_…), as the team's Keys page and"
                " /admin/accounts/apikey/ show it."
            )
        already = key.revoked_at is not None
        api_key_revoke(key=key)
        self.stdout.write(
            f"Key {key.prefix} ({key.name}) {'was already' if already else 'is now'} revoked."
        )
