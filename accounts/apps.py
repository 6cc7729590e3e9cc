from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self):
        from accounts import openapi  # noqa: F401  (registers the schema's auth extensions)
