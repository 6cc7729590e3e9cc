"""POST /v1/moderations: passed to a catalog model that offers it, recorded in the ledger at
its catalog price (zero here, as OpenAI charges), on the input's estimated tokens."""

from decimal import Decimal

import openai
import pytest

from tests.factories import catalog_models
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def moderation(catalog):
    catalog_models(
        {
            "id": "omni-moderation-latest",
            "provider": "openai",
            "input_per_mtok": "0",
            "endpoints": ["moderations"],
        },
        {
            "id": "priced-moderation",
            "provider": "openai",
            "input_per_mtok": "1.00",
            "endpoints": ["moderations"],
        },
    )


def test_a_moderation_is_passed_on_and_recorded_at_its_price(
    moderation, sdk, inference_key, team, upstream
):
    _, secret = inference_key

    raw = sdk(secret).moderations.with_raw_response.create(
        model="priced-moderation", input=["a" * 400, "b" * 400]
    )

    assert [r.flagged for r in raw.parse().results] == [False, False]
    assert upstream.received[-1].path == "/v1/moderations"
    [row] = UsageRecord.objects.filter(team=team)
    # No usage in a moderation answer: 800 characters, counted as 200 tokens at $1 per 1M.
    assert (row.endpoint, row.status, row.prompt_tokens, row.tokens_estimated) == (
        "moderations",
        "ok",
        200,
        True,
    )
    assert row.cost_usd == Decimal("0.0002") == Decimal(raw.headers["x-tollgate-cost"])


def test_without_a_model_the_catalogs_moderation_model_serves(
    moderation, sdk, inference_key, team, upstream
):
    _, secret = inference_key

    result = sdk(secret).moderations.create(input="is this fine?")

    assert result.model == "omni-moderation-latest"
    [row] = UsageRecord.objects.filter(team=team)
    assert (row.model, row.cost_usd) == ("omni-moderation-latest", Decimal(0))


def test_without_a_model_the_first_one_the_key_may_use_and_that_is_priced_serves(
    moderation, sdk, team, upstream
):
    from accounts.services import api_key_create

    # Sorting first: a moderation model without a price, which cannot be billed.
    catalog_models({"id": "a-unpriced", "provider": "openai", "endpoints": ["moderations"]})
    _, everything = api_key_create(team=team, name="all")
    _, limited = api_key_create(team=team, name="priced", allowed_models=["priced-moderation"])

    assert sdk(everything).moderations.create(input="hi").model == "omni-moderation-latest"
    assert sdk(limited).moderations.create(input="hi").model == "priced-moderation"


def test_a_chat_model_is_not_a_moderation_model(catalog, sdk, inference_key, upstream):
    _, secret = inference_key

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(secret).moderations.create(model="gpt-4o", input="hi")

    assert caught.value.code == "model_not_supported"
    assert upstream.received == []


def test_without_a_model_a_key_that_may_use_no_moderation_model_is_told_so(
    moderation, sdk, team, upstream
):
    from accounts.services import api_key_create

    _, chat_only = api_key_create(team=team, name="chat", allowed_models=["gpt-4o"])

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(chat_only).moderations.create(input="hi")

    assert caught.value.body["param"] == "model"
    assert "no moderation model" in caught.value.body["message"]
    assert upstream.received == []
