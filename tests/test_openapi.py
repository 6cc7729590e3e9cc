"""/api/schema/: valid OpenAPI, a path for every /api and /v1 endpoint, and true to the answers."""

import json
import re

import httpx2
import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from routing import proxy

OPENAPI_JSON = "application/vnd.oai.openapi+json"
# Not endpoints of the API: the schema itself, its docs page, and /v1's answer to unknown URLs.
NOT_DOCUMENTED = {"api-schema", "api-docs"}
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def schema():
    return json.loads(APIClient().get("/api/schema/", HTTP_ACCEPT=OPENAPI_JSON).content)


def endpoints(patterns=None, prefix=""):
    """(schema path, view class) of every URL pattern under /api and /v1, from the URLconf."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from endpoints(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and route.startswith(("api/", "v1/")):
            if pattern.name in NOT_DOCUMENTED or pattern.callback is proxy.unknown_endpoint:
                continue
            yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route), pattern.callback.cls


def test_schema_is_valid_openapi(schema):
    validate(schema)
    assert schema["openapi"].startswith("3.")


def test_schema_generation_has_no_warnings_or_errors():
    GENERATOR_STATS.reset()
    with GENERATOR_STATS.silence():
        SchemaGenerator().get_schema(request=None, public=True)
    assert not GENERATOR_STATS._warn_cache and not GENERATOR_STATS._error_cache, [
        *GENERATOR_STATS._warn_cache,
        *GENERATOR_STATS._error_cache,
    ]


def test_every_api_and_v1_endpoint_and_method_has_an_operation(schema):
    found = list(endpoints())
    assert {"/v1/chat/completions", "/v1/models/{model_id}", "/api/teams/{slug}/usage/"} <= {
        path for path, _ in found
    }
    for path, view in found:
        assert path in schema["paths"], path
        methods = {m for m in HTTP_METHODS if hasattr(view, m)}
        assert methods == set(schema["paths"][path]) - {"parameters"}, path
    assert len(schema["paths"]) == len(found)


def test_both_key_schemes_are_bearer_and_each_side_uses_its_own(schema):
    schemes = schema["components"]["securitySchemes"]
    for name in ("managementKey", "inferenceKey"):
        assert schemes[name]["type"] == "http" and schemes[name]["scheme"] == "bearer"
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            security = [name for entry in operation["security"] for name in entry]
            if path.startswith("/v1/"):
                assert security == ["inferenceKey"], path
            else:
                assert set(security) == {"managementKey", "cookieAuth"}, path


def test_metered_v1_calls_document_openai_errors_and_tollgate_headers(schema):
    error = {"$ref": "#/components/schemas/OpenAIError"}
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        responses = schema["paths"][path]["post"]["responses"]
        for status in ("400", "401", "403", "404", "413", "429", "502", "503", "504"):
            assert responses[status]["content"]["application/json"]["schema"] == error
            assert "x-request-id" in responses[status]["headers"]
        assert {"x-request-id", "x-tollgate-cost", "x-tollgate-model"} <= set(
            responses["200"]["headers"]
        )
        assert {"Retry-After", "x-should-retry"} <= set(responses["429"]["headers"])
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}


# --- The schema against what the proxy really answers -----------------------------------------


def conforms(schema, component, value):
    """Validate `value` against a component, resolving the schema's own $refs."""
    document = {**schema["components"]["schemas"][component], "components": schema["components"]}
    errors = [e.message for e in OAS30Validator(document).iter_errors(value)]
    assert not errors, (component, errors, value)


@pytest.mark.django_db(transaction=True)
def test_proxy_answers_match_the_schema(schema, catalog, inference_key, live_portal):
    _, secret = inference_key
    v1 = httpx2.Client(
        base_url=f"{live_portal.url}/v1", headers={"Authorization": f"Bearer {secret}"}
    )
    messages = [{"role": "user", "content": "Hello"}]
    chat_body = {"model": "deepseek-v4-flash", "messages": messages}
    conforms(schema, "ChatCompletionRequest", chat_body)
    unknown_model = {**chat_body, "model": "no-such-model"}

    chat = v1.post("/chat/completions", json=chat_body)
    assert chat.status_code == 200
    conforms(schema, "ChatCompletion", chat.json())
    documented = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["headers"]
    assert {"x-request-id", "x-tollgate-cost", "x-tollgate-model"} <= set(chat.headers)
    assert {h.lower() for h in chat.headers if h.startswith("x-")} <= set(documented)

    stream = v1.post("/chat/completions", json={**chat_body, "stream": True})
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        conforms(schema, "ChatCompletionChunk", json.loads(event))

    embeddings = v1.post("/embeddings", json={"model": "text-embedding-3-small", "input": ["a"]})
    assert embeddings.status_code == 200
    conforms(schema, "EmbeddingList", embeddings.json())

    models = v1.get("/models").json()
    conforms(schema, "ModelList", models)
    conforms(schema, "Model", v1.get("/models/deepseek-v4-flash").json())

    errors = [
        ("/v1/chat/completions", "post", v1.post("/chat/completions", json={"model": "nope"})),
        ("/v1/chat/completions", "post", v1.post("/chat/completions", content=b"not json")),
        ("/v1/chat/completions", "post", v1.post("/chat/completions", json=unknown_model)),
        ("/v1/models/{model_id}", "get", v1.get("/models/no-such-model")),
        ("/v1/models", "get", httpx2.get(f"{live_portal.url}/v1/models")),
    ]
    for path, method, response in errors:
        assert str(response.status_code) in schema["paths"][path][method]["responses"], path
        conforms(schema, "OpenAIError", response.json())
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert [r.status_code for _, _, r in errors] == [400, 400, 404, 404, 401]


# --- The docs page ---------------------------------------------------------------------------


def test_docs_page_renders_swagger_ui_from_local_static_files_only():
    client = APIClient()
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="swagger-ui"' in html and '"/api/schema/"' in html
    # No CDN, and no validator badge that would send the schema to swagger.io.
    assert "http://" not in html and "https://" not in html and '"//' not in html
    assets = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', html)
    assert len(assets) == 4  # Swagger UI's bundle, preset, stylesheet and icon
    for url in assets:
        assert url.startswith("/static/drf_spectacular_sidecar/"), url
        assert client.get(url).status_code == 200, url


def _answer_validator(schema, path, method, status):
    response = schema["paths"][path][method]["responses"][status]
    return OAS30Validator(
        {**response["content"]["application/json"]["schema"], "components": schema["components"]}
    )


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["owner", "member"])
def test_team_settings_answers_match_the_schema_for_every_role(schema, team, owner, member, role):
    from accounts.services import usage_webhook_set

    usage_webhook_set(team=team, url="https://93.184.216.34/usage")
    client = APIClient()
    client.force_login({"owner": owner, "member": member}[role])
    answer = client.get("/api/teams/acme/")
    validator = _answer_validator(schema, "/api/teams/{slug}/", "get", "200")
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(answer.json())]
    assert not errors, errors


@pytest.mark.django_db
def test_every_api_operation_documents_its_errors_in_drfs_shape(schema, team, member):
    for path, operations in schema["paths"].items():
        if path.startswith("/api/"):
            for method, operation in operations.items():
                assert {"400", "401", "403", "404"} <= set(operation["responses"]), (path, method)
    client = APIClient()
    client.force_login(member)
    refused = client.get("/api/teams/acme/keys/")
    assert refused.status_code == 403
    validator = _answer_validator(schema, "/api/teams/{slug}/keys/", "get", "403")
    assert not list(validator.iter_errors(refused.json()))
