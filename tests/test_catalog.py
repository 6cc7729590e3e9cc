"""Loading the catalog: idempotent upserts and a price history that never rewrites the past."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from routing.models import CatalogModel, ModelPrice, Provider, Route
from routing.selectors import catalog_changed, catalog_snapshot
from routing.services import CatalogError, catalog_load, catalog_load_data

DEFAULT = Path(__file__).resolve().parent.parent / "catalog" / "default.toml"
pytestmark = pytest.mark.django_db


def counts():
    return (
        Provider.objects.count(),
        CatalogModel.objects.count(),
        ModelPrice.objects.count(),
        Route.objects.count(),
    )


def test_default_catalog_holds_the_published_facts():
    catalog_load(path=DEFAULT)

    assert counts() == (4, 12, 12, 4)
    flash = CatalogModel.objects.get(name="deepseek-v4-flash")
    price = flash.prices.get()
    assert (price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok) == (
        Decimal("0.18"),
        Decimal("0.25"),
        Decimal("0.07"),
    )
    assert (flash.context_window, flash.output_tokens_per_s, flash.benchmarks["humaneval"]) == (
        128000,
        60,
        92.0,
    )
    assert "vision" not in flash.capabilities
    assert "vision" in CatalogModel.objects.get(name="gpt-4o").capabilities
    # Only an output price is published for these: input stays unpriced, not zero.
    for name in ("qwen3.5-397b", "qwen3-coder-30b", "deepseek-coder"):
        unpriced = CatalogModel.objects.get(name=name).prices.get()
        assert unpriced.input_per_mtok is None and unpriced.output_per_mtok is not None
    assert Route.objects.get(name="bulk_classify").targets == ["deepseek-v4-flash", "qwen3-32b"]
    assert CatalogModel.objects.get(name="text-embedding-3-small").capabilities == ["embeddings"]


def test_loading_twice_changes_nothing():
    call_command("loadcatalog", str(DEFAULT))
    first = counts()
    prices_before = list(ModelPrice.objects.values_list("id", "effective_from"))

    call_command("loadcatalog", str(DEFAULT))

    assert counts() == first
    assert list(ModelPrice.objects.values_list("id", "effective_from")) == prices_before


def test_changed_price_starts_a_new_price_and_keeps_the_old_one():
    earlier = timezone.now() - timedelta(days=3)
    catalog_load(path=DEFAULT, now=earlier)
    data = {
        "provider": [
            {
                "name": "global",
                "base_url": "https://global-apis.com/v1",
                "api_key_env": "GLOBAL_API_KEY",
            }
        ],
        "model": [
            {
                "id": "deepseek-v4-flash",
                "provider": "global",
                "input_per_mtok": "0.20",
                "output_per_mtok": "0.25",
                "cached_input_per_mtok": "0.07",
            }
        ],
    }

    catalog_load_data(data=data)

    old, new = ModelPrice.objects.filter(model__name="deepseek-v4-flash").order_by("effective_from")
    assert (old.input_per_mtok, old.effective_from) == (Decimal("0.18"), earlier)
    assert new.input_per_mtok == Decimal("0.20") and new.effective_from > earlier
    catalog_changed()  # on-commit hooks do not run inside a test's transaction
    assert catalog_snapshot().models["deepseek-v4-flash"].prices.input == Decimal("0.20")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"model": [{"id": "m", "provider": "global", "input_per_mtok": 0.18}]}, "decimal strings"),
        ({"model": [{"id": "m", "provider": "global", "input_per_mtok": "abc"}]}, "not a decimal"),
        ({"model": [{"id": "m", "provider": "global", "input_per_mtok": "-1"}]}, "non-negative"),
        (
            {"model": [{"id": "m", "provider": "global", "input_per_mtok": "0.0000001"}]},
            "6 decimal places",
        ),
        ({"model": [{"id": "m", "provider": "nowhere"}]}, "unknown provider"),
        (
            {"model": [{"id": "m", "provider": "global", "capabilities": ["telepathy"]}]},
            "capabilities",
        ),
        (
            {"model": [{"id": "m", "provider": "global", "endpoints": []}]},
            "endpoints must be a non-empty list",
        ),
        (
            {"model": [{"id": "m", "provider": "global", "endpoints": ["chat", "images"]}]},
            "endpoints must be a non-empty list drawn from chat, completions, embeddings, "
            "moderations, responses",
        ),
        ({"route": [{"name": "r", "targets": ["ghost"]}]}, "unknown targets"),
        ({"route": [{"name": "r", "strategy": "random", "targets": ["gpt-4o"]}]}, "strategy"),
        (
            {
                "route": [
                    {"name": "r", "strategy": "weighted", "targets": ["gpt-4o"], "weights": [1, 2]}
                ]
            },
            "weight",
        ),
        ({"provider": [{"name": "p"}]}, "base_url"),
        ({"modle": []}, "unknown top-level"),
    ],
)
def test_invalid_catalog_is_refused_with_a_clear_message_and_nothing_changes(bad, message):
    catalog_load(path=DEFAULT)
    before = counts()

    with pytest.raises(CatalogError, match=message):
        catalog_load_data(data=bad)

    assert counts() == before


def test_loadcatalog_command_reports_a_bad_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[[model]\nid = ")
    with pytest.raises(CommandError):
        call_command("loadcatalog", str(path))


def test_loadcatalog_of_a_big_file_shows_progress_on_a_terminal_only(tmp_path):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    path = tmp_path / "big.toml"
    path.write_text(
        '[[provider]]\nname = "bulk"\nbase_url = "https://bulk.example/v1"\n'
        + "".join(
            f'[[model]]\nid = "bulk-{n}"\nprovider = "bulk"\ninput_per_mtok = "0.1"\n'
            f'output_per_mtok = "0.2"\n'
            for n in range(300)
        )
    )
    terminal, log = Terminal(), io.StringIO()

    call_command("loadcatalog", str(path), stdout=terminal)
    call_command("loadcatalog", str(path), stdout=log)

    assert f"\r\x1b[K{path}: models 150/300" in terminal.getvalue()
    assert (
        terminal.getvalue()
        .split("\n")[0]
        .endswith(
            f"{path}: 1 providers, 300 models, 0 routes; new prices for "
            + ", ".join(f"bulk-{n}" for n in range(300))
        )
    )
    assert log.getvalue() == f"{path}: 1 providers, 300 models, 0 routes; prices unchanged\n"


def test_a_models_endpoints_are_declared_or_follow_from_its_capabilities():
    catalog_load(path=DEFAULT)
    catalog_load_data(
        data={
            "model": [
                {"id": "native", "provider": "global", "endpoints": ["chat", "responses"]},
                {"id": "legacy", "provider": "global", "endpoints": ["completions"]},
                {"id": "guard", "provider": "global", "endpoints": ["moderations"]},
            ]
        }
    )
    catalog_changed()
    models = catalog_snapshot().models

    assert models["native"].served == ("chat", "responses")
    assert models["legacy"].served == ("completions",)  # no chat: nothing to bridge
    assert models["guard"].served == ("moderations",)
    # None declared: from the capabilities, with the Responses API bridged to chat.
    assert models["gpt-4o"].served == ("chat", "responses")
    assert models["text-embedding-3-small"].served == ("embeddings",)
