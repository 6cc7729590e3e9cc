"""One log line per call: its ids, model, status, tokens, cost and latency; never a secret,
never prompt text; JSON in production."""

import json
import logging
import logging.config
from decimal import Decimal

import httpx2
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


@pytest.mark.parametrize(
    "send, status, code",
    [
        (
            lambda url, secret: httpx2.post(f"{url}/v1/chat/completions", json={}),
            401,
            "invalid_api_key",
        ),
        (
            lambda url, secret: httpx2.post(
                f"{url}/v1/chat/completions",
                content=b"{not json",
                headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            ),
            400,
            "invalid_json",
        ),
        (
            lambda url, secret: httpx2.post(
                f"{url}/v1/chat/completions",
                json={"model": "gpt-4o"},
                headers={"Authorization": f"Bearer {secret}"},
            ),
            400,
            "missing_required_parameter",
        ),
        (lambda url, secret: httpx2.get(f"{url}/v1/no-such-endpoint"), 404, "unknown_url"),
        (
            lambda url, secret: httpx2.post(
                f"{url}/v1/chat/completions", content=b"x" * (settings.TOLLGATE_MAX_BODY_BYTES + 1)
            ),
            413,
            "request_too_large",
        ),
    ],
    ids=["no-key", "bad-json", "invalid-body", "unknown-url", "too-large"],
)
def test_a_request_refused_before_the_meter_is_one_line_with_its_request_id(
    catalog, inference_key, live_portal, caplog, send, status, code
):
    key, secret = inference_key
    caplog.set_level(logging.INFO)
    answer = send(live_portal.url, secret)
    assert answer.status_code == status

    lines = [r for r in caplog.records if r.name == "tollgate.calls"]
    assert [(r.request_id, r.http_status, r.code) for r in lines] == [
        (answer.headers["x-request-id"], status, code)
    ]
    if code in ("invalid_json", "missing_required_parameter"):
        assert lines[0].key_prefix == key.prefix and lines[0].team_id == key.team_id
    # Django's request logger does not say it a second time.
    assert not [r for r in caplog.records if r.name == "django.request"]


def test_a_failed_call_is_the_meters_line_alone(catalog, inference_key, sdk, upstream, caplog):
    from tests.fake_upstream import Fail

    _, secret = inference_key
    upstream.script("gpt-4o", Fail(500))
    caplog.set_level(logging.INFO)
    with pytest.raises(Exception):
        sdk(secret).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    lines = [r for r in caplog.records if r.name == "tollgate.calls"]
    assert len(lines) == 1 and lines[0].status == "upstream_error"
    assert not [r for r in caplog.records if r.name == "django.request"]


def test_uvicorn_access_lines_stay_off_under_djangos_logging():
    """uvicorn --no-access-log empties uvicorn.access; Django's LOGGING, applied in each
    worker after it, must not turn it back on (every call would log a second, id-less line)."""
    access = logging.getLogger("uvicorn.access")
    saved = (access.handlers[:], access.propagate, access.level, access.disabled)
    try:
        access.handlers, access.propagate = [], False
        logging.config.dictConfig(settings.LOGGING)
        assert access.propagate is False and not access.handlers
        assert not access.isEnabledFor(logging.INFO)
    finally:
        access.handlers, access.propagate, access.level, access.disabled = saved


def test_an_api_error_line_names_the_request_id_its_answer_carries(team, member, caplog):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(member)
    caplog.set_level(logging.INFO)
    answer = client.get("/api/teams/acme/keys/")
    assert answer.status_code == 403 and answer["x-request-id"].startswith("req_")
    [line] = [r for r in caplog.records if r.name == "django.request"]
    assert line.request_id == answer["x-request-id"]
    page = client.get("/t/acme/")
    assert (
        page["x-request-id"].startswith("req_") and page["x-request-id"] != answer["x-request-id"]
    )


def test_a_call_the_sweeper_records_has_its_line_too(team, caplog):
    from datetime import timedelta

    from django.utils import timezone

    from accounts.services import api_key_create
    from tests.factories import open_call
    from usage.metering import inflight_sweep

    key, _ = api_key_create(team=team, name="app")
    open_call(team, key, "killed-mid-stream", timezone.now() - timedelta(hours=1), deadline_s=60)
    caplog.set_level(logging.INFO, logger="tollgate.calls")
    assert inflight_sweep() == 1
    [line] = [r for r in caplog.records if r.name == "tollgate.calls"]
    assert (line.request_id, line.status, line.key_prefix) == (
        "killed-mid-stream",
        "interrupted",
        key.prefix,
    )


def test_the_model_list_is_one_line_with_its_request_id_and_key(
    catalog, inference_key, live_portal, caplog
):
    key, secret = inference_key
    caplog.set_level(logging.INFO)
    answer = httpx2.get(
        f"{live_portal.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    assert answer.status_code == 200
    [line] = [r for r in caplog.records if r.name == "tollgate.calls"]
    assert (line.request_id, line.key_prefix, line.endpoint) == (
        answer.headers["x-request-id"],
        key.prefix,
        "models",
    )
