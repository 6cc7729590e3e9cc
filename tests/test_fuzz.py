"""Property-based fuzzing: /v1 bodies from hypothesis strategies (valid, near-valid, hostile)
against the live portal, and every /api operation from schemathesis, generated from
/api/schema/ itself (inputs that fit the schema, and inputs that break it). Never a 5xx;
every error in its surface's shape; every call that reached the upstream in the ledger."""

import json

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_create
from tests.factories import catalog_models
from usage.models import UsageRecord

FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

# --- /v1 ---------------------------------------------------------------------------------

MODELS = st.sampled_from(
    ["gpt-4o", "deepseek-v4-flash", "text-embedding-3-small", "davinci-002", "no-such", ""]
)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", ""]),
        "content": st.text(max_size=50),
    }
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
)
CHAT_VALID = st.fixed_dictionaries(
    {"model": st.just("gpt-4o"), "messages": st.lists(MESSAGE, min_size=1, max_size=3)},
    optional={
        "max_tokens": st.integers(min_value=1, max_value=4096),
        "temperature": st.floats(min_value=0, max_value=2),
        "stream": st.booleans(),
        "user": st.text(max_size=30),
        "n": st.integers(min_value=1, max_value=2),
    },
)
CHAT_NEAR = st.fixed_dictionaries(
    {"model": MODELS, "messages": st.lists(MESSAGE, max_size=3) | ANY_JSON},
    optional={
        "max_tokens": NUMBERS,
        "max_completion_tokens": NUMBERS,
        "n": NUMBERS,
        "temperature": NUMBERS,
        "top_p": NUMBERS,
        "seed": NUMBERS,
        "stream": ANY_JSON,
        "stream_options": ANY_JSON,
        "user": ANY_JSON,
        "tools": ANY_JSON,
        "response_format": ANY_JSON,
    },
)
RESPONSE_ITEM = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "developer", "assistant", ""]),
            "content": st.text(max_size=30) | ANY_JSON,
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["message", "function_call", "function_call_output", "reasoning", "input_text"]
            )
        },
        optional={
            "call_id": ANY_JSON,
            "name": ANY_JSON,
            "arguments": ANY_JSON,
            "output": ANY_JSON,
            "content": ANY_JSON,
            "role": ANY_JSON,
        },
    ),
    ANY_JSON,
)
RESPONSES_NEAR = st.fixed_dictionaries(
    {"model": MODELS, "input": st.text(max_size=30) | st.lists(RESPONSE_ITEM, max_size=3)},
    optional={
        "instructions": ANY_JSON,
        "tools": ANY_JSON,
        "tool_choice": ANY_JSON,
        "text": ANY_JSON,
        "max_output_tokens": NUMBERS,
        "temperature": NUMBERS,
        "stream": ANY_JSON,
        "stream_options": ANY_JSON,
        "metadata": ANY_JSON,
        "parallel_tool_calls": ANY_JSON,
        "reasoning": ANY_JSON,
    },
)
COMPLETIONS_NEAR = st.fixed_dictionaries(
    {"model": MODELS, "prompt": st.text(max_size=30) | ANY_JSON},
    optional={
        "max_tokens": NUMBERS,
        "n": NUMBERS,
        "best_of": NUMBERS,
        "stream": ANY_JSON,
        "stream_options": ANY_JSON,
        "suffix": ANY_JSON,
    },
)
EMBEDDINGS = st.fixed_dictionaries(
    {"model": MODELS, "input": ANY_JSON | st.text(max_size=30)},
    optional={"dimensions": NUMBERS, "encoding_format": ANY_JSON},
)
RAW = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    ANY_JSON.map(lambda v: json.dumps(v).encode()),
)


@pytest.mark.django_db(transaction=True)
def test_v1_never_answers_5xx_and_every_error_is_openai_shaped(
    catalog, team, upstream, live_portal
):
    # A model for legacy completions beside the default catalog's.
    catalog_models(
        {
            "id": "davinci-002",
            "provider": "openai",
            "input_per_mtok": "2",
            "output_per_mtok": "2",
            "endpoints": ["completions"],
        }
    )
    _, secret = api_key_create(team=team, name="fuzz")
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    sent = []

    @FUZZ
    @given(
        st.one_of(
            CHAT_VALID.map(lambda b: ("chat/completions", json.dumps(b).encode())),
            CHAT_NEAR.map(lambda b: ("chat/completions", json.dumps(b).encode())),
            EMBEDDINGS.map(lambda b: ("embeddings", json.dumps(b).encode())),
            RESPONSES_NEAR.map(lambda b: ("responses", json.dumps(b).encode())),
            COMPLETIONS_NEAR.map(lambda b: ("completions", json.dumps(b).encode())),
            RAW.map(lambda raw: ("chat/completions", raw)),
        )
    )
    def one_call(request):
        path, body = request
        answer = httpx2.post(
            f"{live_portal.url}/v1/{path}", headers=headers, content=body, timeout=30
        )
        sent.append(answer.status_code)
        assert answer.status_code < 500 or answer.status_code in (502, 503, 504), answer.text
        if answer.status_code >= 400:
            error = answer.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]

    one_call()
    assert 200 in sent and any(400 <= s < 500 for s in sent)
    # Every call that reached the upstream is in the ledger, once.
    reached = UsageRecord.objects.filter(team=team).exclude(status="refused")
    assert reached.count() == len(upstream.received)


# --- /api --------------------------------------------------------------------------------

OPENAPI_JSON = "application/vnd.oai.openapi+json"


def _api_operations():
    from django.test import Client

    raw = json.loads(Client().get("/api/schema/", HTTP_ACCEPT=OPENAPI_JSON).content)
    schema = schemathesis.openapi.from_dict(raw)
    return [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path.startswith("/api/teams/")
    ]


@pytest.fixture(scope="module")
def api_operations(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        return {f"{op.method.upper()} {op.path}": op for op in _api_operations()}


API_LABELS = [
    "GET /api/teams/",
    "GET /api/teams/{slug}/",
    "PATCH /api/teams/{slug}/",
    "POST /api/teams/{slug}/usage-webhook/rotate-secret/",
    "GET /api/teams/{slug}/keys/",
    "POST /api/teams/{slug}/keys/",
    "POST /api/teams/{slug}/keys/{prefix}/revoke/",
    "GET /api/teams/{slug}/usage/",
    "GET /api/teams/{slug}/usage/export/",
    "GET /api/teams/{slug}/usage/summary/",
    "GET /api/teams/{slug}/routes/",
    "POST /api/teams/{slug}/routes/",
    "PUT /api/teams/{slug}/routes/{name}/",
    "DELETE /api/teams/{slug}/routes/{name}/",
    "GET /api/teams/{slug}/routes/changes/",
    "POST /api/teams/{slug}/compare/",
    "GET /api/teams/{slug}/budget/",
    "PUT /api/teams/{slug}/budget/",
    "GET /api/teams/{slug}/alerts/",
    "GET /api/teams/{slug}/invoices/",
    "GET /api/teams/{slug}/invoices/{month}/",
    "GET /api/teams/{slug}/audit/",
]


def test_the_fuzzed_operations_are_every_team_operation(api_operations):
    assert sorted(api_operations) == sorted(API_LABELS)


@pytest.mark.django_db
@pytest.mark.parametrize("label", API_LABELS)
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_never_answers_5xx_and_every_error_is_drfs_shape(
    catalog, team, api_operations, label, mode
):
    _, secret = api_key_create(team=team, name="fuzz-admin", kind=ApiKey.Kind.MANAGEMENT)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    operation = api_operations[label]
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(case=strategy, ours=st.booleans())
    def one_request(case, ours):
        path_parameters = dict(case.path_parameters or {})
        if ours and "slug" in path_parameters:
            path_parameters["slug"] = "acme"  # half the cases reach the team's own data
        path = operation.path.format(**{k: str(v) for k, v in path_parameters.items()})
        body = case.body if not isinstance(case.body, schemathesis.core.NotSet) else None
        answer = getattr(client, operation.method.lower())(
            path,
            data=body if isinstance(body, bytes) or body is None else json.dumps(body),
            content_type="application/json",
            QUERY_STRING=httpx2.QueryParams(
                {k: str(v) for k, v in (case.query or {}).items()}
            ).__str__(),
        )
        assert answer.status_code < 500, (label, path, case.query, body, answer.content[:300])
        if answer.status_code >= 400:
            assert answer["content-type"].startswith("application/json"), answer.content[:200]
            assert isinstance(answer.json(), dict)

    one_request()
