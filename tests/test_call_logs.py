"""One log line per call: its ids, model, status, tokens, cost and latency; never a secret,
never prompt text; JSON in production."""

import json
import logging
import logging.config
from decimal import Decimal

import pytest
from django.conf import settings

from usage.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)
PROMPT = "my very private prompt about payroll"


def test_each_call_is_one_line_with_its_figures_and_no_secrets(
    catalog, team, inference_key, sdk, caplog
):
    key, secret = inference_key
    caplog.set_level(logging.INFO, logger="tollgate.calls")
    client = sdk(secret)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}])
    with pytest.raises(Exception):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": PROMPT}]
        )

    lines = [r for r in caplog.records if r.name == "tollgate.calls"]
    assert len(lines) == 2
    served, refused = lines
    row = UsageRecord.objects.get(team=team, status="ok")
    assert (served.request_id, served.key_prefix, served.model, served.status) == (
        row.request_id,
        key.prefix,
        "gpt-4o",
        "ok",
    )
    assert (served.prompt_tokens, served.completion_tokens) == (
        row.prompt_tokens,
        row.completion_tokens,
    )
    assert Decimal(served.cost_usd) == row.cost_usd and refused.status == "refused"
    formatter = logging.config.dictConfigClass({"version": 1}).configure_formatter(
        settings.LOGGING["formatters"]["json"]
    )
    for record in lines:
        text = formatter.format(record)
        assert secret not in text and PROMPT not in text and "payroll" not in text
        assert json.loads(text)["request_id"] == record.request_id
