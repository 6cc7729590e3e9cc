from django.db import transaction
from django.db.models.signals import post_delete, post_save

from routing.models import CatalogModel, ModelPrice, Provider, Route
from routing.selectors import catalog_changed


def _on_catalog_write(**kwargs):
    # Admin edits and API writes must reach every worker's snapshot too.
    transaction.on_commit(catalog_changed)


def connect():
    for model in (Provider, CatalogModel, ModelPrice, Route):
        post_save.connect(
            _on_catalog_write, sender=model, dispatch_uid=f"catalog-save-{model.__name__}"
        )
        post_delete.connect(
            _on_catalog_write, sender=model, dispatch_uid=f"catalog-delete-{model.__name__}"
        )
