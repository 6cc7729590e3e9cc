import logging

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger("tollgate.keys")


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        from accounts import (
            openapi,  # noqa: F401  (registers the schema's auth extensions)
            signals,  # noqa: F401  (sign-ins go in the audit log)
        )

        # Once per process, at start-up: with SECRET_KEY keying the key hashes, rotating it
        # would turn every issued API key away.
        if not settings.DEBUG and not settings.TOLLGATE_KEY_PEPPER:
            logger.warning(
                "TOLLGATE_KEY_PEPPER is not set, so API-key hashes are keyed by SECRET_KEY and"
                " changing SECRET_KEY would invalidate every key. Set TOLLGATE_KEY_PEPPER to a"
                " new random secret and TOLLGATE_KEY_PEPPER_FALLBACKS to the current SECRET_KEY"
                " (see README, 'Rotating secrets')."
            )
