"""The OpenAI-compatible /v1 endpoints, as async DRF views.

DRF carries the key check (InferenceKeyAuthentication), JSON parsing and
the error shape (proxy_exception_handler); the views validate the body,
then hand the call to routing.calls.
"""

import asyncio
import json
import math
import re

from adrf.views import APIView
from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import APIException
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer

from accounts.authentication import InferenceKeyAuthentication
from portal.logs import current_request_id, new_request_id
from routing import openapi
from routing.calls import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MODERATIONS,
    RESPONSES,
    call_abandon_unsent,
    call_json,
    call_prepare,
    detached,
    format_usd,
    json_bytes,
    route_allowed,
)
from routing.errors import (
    ProxyError,
    log_unmetered,
    openai_error_response,
    proxy_exception_handler,
    request_too_large,
)
from routing.selectors import ENDPOINTS, catalog_snapshot_async
from routing.streaming import RelayBody, abandon_relay, call_stream
from usage.pricing import unpriced_direction


class JSONBodyParser(BaseParser):
    """Parses any body as JSON, as OpenAI does, refusing bodies over the size limit with 413."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.TOLLGATE_MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise request_too_large()
        try:
            parsed = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProxyError(
                400,
                f"We could not parse the JSON body of your request: {exc}.",
                code="invalid_json",
            ) from None
        except RecursionError:
            raise ProxyError(
                400,
                "We could not parse the JSON body of your request: it is nested too deeply.",
                code="invalid_json",
            ) from None
        if _LONE_SURROGATE.search(raw) and not _encodable(parsed):
            raise ProxyError(
                400,
                "The JSON body holds text that is not valid Unicode (a lone surrogate escape).",
                code="invalid_json",
            )
        return parsed


# A \uD800-\uDFFF escape: valid JSON, but alone (not half of a pair) it is no character,
# and no upstream request can carry it.
_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _no_constant(name: str):
    # NaN, Infinity and -Infinity are not JSON (RFC 8259), and no provider takes them.
    raise ValueError(f"{name} is not a valid JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


class FirstRendererNegotiation(BaseContentNegotiation):
    """OpenAI answers JSON (or SSE) whatever the Accept header says."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ProxyView(APIView):
    authentication_classes = [InferenceKeyAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [JSONBodyParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = FirstRendererNegotiation
    throttle_classes = []

    def get_exception_handler(self):
        return proxy_exception_handler

    def initialize_request(self, request, *args, **kwargs):
        self.request_id = new_request_id()
        current_request_id.set(self.request_id)
        self.metered = False
        return super().initialize_request(request, *args, **kwargs)

    def handle_exception(self, exc):
        # A refusal the meter recorded was logged with the call's line.
        self.metered = self.metered or getattr(exc, "recorded", False)
        return super().handle_exception(exc)

    async def async_dispatch(self, request, *args, **kwargs):
        """adrf's dispatch without its thread hop for `initial`: the key check, the body and
        the call's preparation are awaited on the event loop (portal.aio)."""
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await self.initial_async(request, *args, **kwargs)
            method = request.method.lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            if handler is None:
                self.http_method_not_allowed(request, *args, **kwargs)  # raises
            response = await handler(request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response

    async def initial_async(self, request, *args, **kwargs):
        """DRF's `initial` (negotiation, versioning, authentication, permissions; /v1 has
        no throttles: its limits are the call's), with the key checked asynchronously."""
        self.format_kwarg = self.get_format_suffix(**kwargs)
        request.accepted_renderer, request.accepted_media_type = self.perform_content_negotiation(
            request
        )
        request.version, request.versioning_scheme = self.determine_version(
            request, *args, **kwargs
        )
        for authenticator in request.authenticators:
            try:
                principal = await authenticator.authenticate_async(request)
            except APIException:
                request._not_authenticated()
                raise
            if principal is not None:
                request._authenticator = authenticator
                request.user, request.auth = principal
                break
        else:
            request._not_authenticated()
        self.check_permissions(request)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["x-request-id"] = self.request_id
        # Each /v1 request has one log line, the meter's or log_unmetered's: Django's request
        # logger must not add a second for a 4xx or 5xx.
        response._has_been_logged = True
        # A call's meter logs it (its refusals too); anything else is logged here.
        if not self.metered and self.call_opened() is None:
            principal = getattr(request, "_user", None)
            refused = response.status_code >= 400
            log_unmetered(
                request_id=self.request_id,
                http_status=response.status_code,
                path=request.path,
                payload=(getattr(response, "data", None) or _json_payload(response))
                if refused
                else None,
                key_prefix=getattr(principal, "prefix", ""),
                team_id=getattr(principal, "team_id", None),
            )
        return response

    def call_opened(self):
        """The call once its meter is open (which then logs it), else None."""
        return None


def _bad(message, param=None, code=None):
    return ProxyError(400, message, param=param, code=code)


def _check_common(body) -> dict:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise _bad(
            "You must provide a model parameter.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise _bad("'model' must be a non-empty string.", param="model", code="invalid_type")
    if len(model) > 200:
        raise _bad(
            "'model' is longer than any model or route name (200 characters).",
            param="model",
            code="invalid_value",
        )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string.", param="user", code="invalid_type")
    # Both are kept on the ledger row, and PostgreSQL text cannot hold a NUL: refused here,
    # before any upstream is called, rather than failing the ledger write after.
    for name in ("model", "user"):
        if "\x00" in (body.get(name) or ""):
            raise _bad(
                f"'{name}' may not contain a NUL character.", param=name, code="invalid_value"
            )
    return body


# Inputs of one embeddings request, as OpenAI bounds them.
MAX_EMBEDDING_INPUTS = 2048
# The ranges providers accept (OpenAI's API reference): integers as [low, high], numbers too.
INT32_MAX, INT64 = 2**31 - 1, 2**63
INTEGER_RANGES = {
    "max_tokens": (1, INT32_MAX),
    "max_completion_tokens": (1, INT32_MAX),
    "n": (1, 128),
    "best_of": (1, 128),
    "top_logprobs": (0, 20),
    "seed": (-INT64, INT64 - 1),
    "dimensions": (1, 8192),
    "max_output_tokens": (1, INT32_MAX),
}
NUMBER_RANGES = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}


def _in_ranges(body: dict, names) -> None:
    """The body's bounded integers and numbers, each of its type and within range."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if name in INTEGER_RANGES:
            low, high = INTEGER_RANGES[name]
            if not isinstance(value, int) or isinstance(value, bool):
                raise _bad(f"'{name}' must be an integer.", param=name, code="invalid_type")
        else:
            low, high = NUMBER_RANGES[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise _bad(f"'{name}' must be a number.", param=name, code="invalid_type")
        if not low <= value <= high:
            raise _bad(
                f"'{name}' must be between {low} and {high}; it is {value}.",
                param=name,
                code="invalid_value",
            )


CHAT_BOUNDED = (
    "max_tokens",
    "max_completion_tokens",
    "n",
    "top_logprobs",
    "seed",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
)


def validate_chat_body(body) -> dict:
    _check_common(body)
    messages = _required(body, "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array.", param="messages", code="invalid_type")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad(
                f"'messages[{index}]' must be an object with a 'role'.",
                param=f"messages[{index}]",
                code="invalid_type",
            )
    _check_stream(body)
    _in_ranges(body, CHAT_BOUNDED)
    return body


def _required(body: dict, name: str) -> object:
    value = body.get(name)
    if value is None:
        raise _bad(
            f"You must provide a{'n' if name[0] in 'aeiou' else ''} {name} parameter.",
            param=name,
            code="missing_required_parameter",
        )
    return value


def _check_stream(body: dict) -> None:
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise _bad("'stream' must be a boolean.", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad(
            "'stream_options' must be an object.", param="stream_options", code="invalid_type"
        )


def validate_completions_body(body) -> dict:
    _check_common(body)
    prompt = _required(body, "prompt")
    if not _prompt_shaped(prompt):
        raise _bad(
            "'prompt' must be a non-empty string, array of strings, array of token ids, or "
            "array of token-id arrays.",
            param="prompt",
            code="invalid_type",
        )
    _check_stream(body)
    _in_ranges(body, (*CHAT_BOUNDED, "best_of"))
    return body


def _prompt_shaped(prompt) -> bool:
    def token_ids(value):
        return (
            isinstance(value, list)
            and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
        )

    if isinstance(prompt, str):
        return prompt != ""
    return (
        isinstance(prompt, list)
        and 0 < len(prompt) <= MAX_EMBEDDING_INPUTS
        and (
            all(isinstance(p, str) for p in prompt)
            or token_ids(prompt)
            or all(token_ids(p) for p in prompt)
        )
    )


def validate_responses_body(body) -> dict:
    _check_common(body)
    value = _required(body, "input")
    if not (
        (isinstance(value, str) and value != "")
        or (isinstance(value, list) and value and all(isinstance(i, dict) for i in value))
    ):
        raise _bad(
            "'input' must be a non-empty string or an array of input items.",
            param="input",
            code="invalid_type",
        )
    _check_stream(body)
    for name in ("tools", "instructions"):
        kind = list if name == "tools" else str
        if body.get(name) is not None and not isinstance(body[name], kind):
            raise _bad(f"'{name}' is not of the right type.", param=name, code="invalid_type")
    _in_ranges(body, ("max_output_tokens", "temperature", "top_p"))
    # What cannot be bridged (or billed) is refused as the call is prepared, which translates
    # the request once for its bounds (routing.calls.call_prepare), before any upstream call.
    return body


def validate_moderations_body(body) -> dict:
    _check_common(body)
    value = _required(body, "input")

    def part(item):
        return isinstance(item, dict) and (
            (item.get("type") == "text" and isinstance(item.get("text"), str))
            or (item.get("type") == "image_url" and isinstance(item.get("image_url"), dict))
        )

    shaped = (isinstance(value, str) and value != "") or (
        isinstance(value, list)
        and 0 < len(value) <= MAX_EMBEDDING_INPUTS
        and (all(isinstance(v, str) for v in value) or all(part(v) for v in value))
    )
    if not shaped:
        raise _bad(
            "'input' must be a non-empty string, an array of strings, or an array of text and "
            "image_url parts.",
            param="input",
            code="invalid_type",
        )
    return body


def validate_embeddings_body(body) -> dict:
    _check_common(body)
    _in_ranges(body, ("dimensions",))
    value = _required(body, "input")

    def valid_item(item):
        return (isinstance(item, str) and item != "") or (
            isinstance(item, list)
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        )

    if (
        isinstance(value, list)
        and value
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    ):
        return body
    if not (
        valid_item(value)
        or (isinstance(value, list) and value and all(valid_item(i) for i in value))
    ):
        raise _bad(
            "'input' must be a non-empty string, array of strings, or array of token arrays.",
            param="input",
            code="invalid_type",
        )
    if (
        isinstance(value, list)
        and not all(isinstance(t, int) for t in value)
        and (len(value) > MAX_EMBEDDING_INPUTS)
    ):
        raise _bad(
            f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items; it holds {len(value)}.",
            param="input",
            code="invalid_value",
        )
    return body


def _call_headers(response, call, model):
    """Headers every metered response carries: the serving model, the route, the rate limits."""
    response["x-tollgate-model"] = model.name
    if call.route:
        response["x-tollgate-route"] = call.route
    for name, value in call.ratelimit_headers.items():
        response[name] = value
    return response


def _json_response(call, payload, model, cost) -> HttpResponse:
    response = HttpResponse(json_bytes(payload), content_type="application/json")
    response["x-tollgate-cost"] = format_usd(cost)
    return _call_headers(response, call, model)


class ProxyCallView(ProxyView):
    """A metered call. Everything before the upstream call (key check, body validation,
    catalog, access, limits, prices, reservation) is awaited in `initial_async`; the
    handler then hands the call to `detached`, which owns it from there.

    A client can leave at any moment. If it leaves while the call is being prepared, the
    preparation still finishes (shielded), and a call it opened is recorded at once as
    never sent upstream.
    """

    endpoint: str
    validate = None

    def call_opened(self):
        return self.call

    def initialize_request(self, request, *args, **kwargs):
        self.call = None
        return super().initialize_request(request, *args, **kwargs)

    async def initial_async(self, request, *args, **kwargs):
        await super().initial_async(request, *args, **kwargs)
        if request.method == "POST":
            self.body = type(self).validate(await self.completed(request.data))
            preparing = asyncio.ensure_future(
                call_prepare(
                    principal=request.user,
                    endpoint=self.endpoint,
                    body=self.body,
                    request_id=self.request_id,
                    now=timezone.now(),
                )
            )
            try:
                self.call = await asyncio.shield(preparing)
            except asyncio.CancelledError:
                preparing.add_done_callback(_abandon_if_opened)
                raise

    async def completed(self, body):
        """The body with what the gateway fills in before checking it (nothing, here)."""
        return body

    def hand_off(self, coroutine, **kwargs):
        """Give the call to a task that outlives the client (routing.calls.detached)."""
        return detached.run(self.call, coroutine, **kwargs)


def _abandon_if_opened(preparing: asyncio.Future) -> None:
    """Done-callback of a preparation whose client left: a call it opened is recorded as
    never sent; a refusal it raised was recorded already."""
    if preparing.cancelled() or preparing.exception() is not None:
        return
    detached.spawn(call_abandon_unsent(preparing.result()))


class ChatCompletionsView(ProxyCallView):
    endpoint = CHAT
    validate = validate_chat_body

    @extend_schema(
        operation_id="createChatCompletion",
        summary="Chat completion (JSON or streamed)",
        description="OpenAI's chat completions, metered and billed to the key's team. "
        "`model` names a catalog model or a route; a route may fall back to its other "
        "targets before the first byte of the answer.",
        tags=openapi.TAGS,
        request={"application/json": openapi.ref("ChatCompletionRequest")},
        responses=openapi.CHAT_RESPONSES,
        parameters=openapi.CALL_HEADERS,
    )
    async def post(self, request):
        return await _generate(self)


class CompletionsView(ProxyCallView):
    endpoint = COMPLETIONS
    validate = validate_completions_body

    @extend_schema(
        operation_id="createCompletion",
        summary="Legacy text completion (JSON or streamed)",
        description="OpenAI's legacy completions, for models whose catalog entry lists "
        "`completions`; metered and billed to the key's team like chat.",
        tags=openapi.TAGS,
        request={"application/json": openapi.ref("CompletionRequest")},
        responses=openapi.COMPLETION_RESPONSES,
        parameters=openapi.CALL_HEADERS,
    )
    async def post(self, request):
        return await _generate(self)


async def _generate(view: ProxyCallView):
    """A call that produces output (chat, legacy completions): streamed or as JSON."""
    body, call = view.body, view.call
    if body.get("stream"):
        relay = await view.hand_off(call_stream(call, body), on_abandon=abandon_relay)
        response = StreamingHttpResponse(RelayBody(relay), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return _call_headers(response, call, relay.model)
    return _json_response(call, *await view.hand_off(call_json(call, body)))


class EmbeddingsView(ProxyCallView):
    endpoint = EMBEDDINGS
    validate = validate_embeddings_body

    @extend_schema(
        operation_id="createEmbedding",
        summary="Embeddings",
        description="OpenAI's embeddings, metered and billed to the key's team.",
        tags=openapi.TAGS,
        request={"application/json": openapi.ref("EmbeddingRequest")},
        responses={
            200: OpenApiResponse(response=openapi.ref("EmbeddingList"), description="The vectors."),
            **openapi.CALL_ERRORS,
        },
        parameters=openapi.CALL_HEADERS,
    )
    async def post(self, request):
        return _json_response(self.call, *await self.hand_off(call_json(self.call, self.body)))


class ResponsesView(ProxyCallView):
    endpoint = RESPONSES
    validate = validate_responses_body

    @extend_schema(
        operation_id="createResponse",
        summary="Response (OpenAI's Responses API)",
        description="Served natively by a model whose catalog entry lists `responses`, and "
        "bridged to chat completions for the others (instructions, input items, text and "
        "image content, function tools and their outputs, max_output_tokens, text.format); "
        "metered and billed exactly like chat. Built-in tools and previous_response_id are "
        "refused (400): their charges are not tokens, and the gateway stores no responses.",
        tags=openapi.TAGS,
        request={"application/json": openapi.ref("ResponseRequest")},
        responses={
            200: OpenApiResponse(response=openapi.ref("Response"), description="The response."),
            **openapi.CALL_ERRORS,
        },
        parameters=openapi.CALL_HEADERS,
    )
    async def post(self, request):
        return await _generate(self)


def _stored_response_schema(operation_id: str, summary: str):
    return extend_schema(
        operation_id=operation_id,
        summary=summary,
        description="The gateway stores no responses: always 404, saying so.",
        tags=openapi.TAGS,
        responses={401: openapi.UNAUTHORIZED, 404: openapi.CALL_ERRORS[404]},
        parameters=[
            OpenApiParameter("response_id", OpenApiTypes.STR, OpenApiParameter.PATH),
            openapi.REQUEST_ID,
        ],
    )


class StoredResponseView(ProxyView):
    @_stored_response_schema("retrieveResponse", "A stored response (not kept by this gateway)")
    async def get(self, request, response_id):
        raise _not_stored(response_id)

    @_stored_response_schema("deleteResponse", "Delete a stored response (none is kept)")
    async def delete(self, request, response_id):
        raise _not_stored(response_id)


def _not_stored(response_id: str) -> ProxyError:
    return ProxyError(
        404,
        f"No response `{response_id[:100]}`: this gateway does not store responses (they are "
        "answered and billed, not kept); keep what you need from the answer itself.",
        code="response_not_stored",
    )


class ModerationsView(ProxyCallView):
    endpoint = MODERATIONS
    validate = validate_moderations_body

    @extend_schema(
        operation_id="createModeration",
        summary="Moderation",
        description="OpenAI's moderations, passed to a catalog model that lists "
        "`moderations` (without `model`: the first such model by id that the key may use and "
        "that has a price) and recorded in the "
        "ledger at its catalog price (which may be zero), on the input's estimated tokens.",
        tags=openapi.TAGS,
        request={"application/json": openapi.ref("ModerationRequest")},
        responses={
            200: OpenApiResponse(
                response=openapi.ref("ModerationResult"), description="The verdicts."
            ),
            **openapi.CALL_ERRORS,
        },
        parameters=openapi.CALL_HEADERS,
    )
    async def post(self, request):
        return _json_response(self.call, *await self.hand_off(call_json(self.call, self.body)))

    async def completed(self, body):
        # OpenAI's SDKs send no model unless told: the first moderation model (by id) this
        # key may use and the catalog prices serves.
        if isinstance(body, dict) and body.get("model") is None:
            catalog = await catalog_snapshot_async()
            principal = self.request.user
            serving = sorted(
                m.name
                for m in catalog.models.values()
                if m.serves(MODERATIONS)
                and principal.may_use(m.name)
                and unpriced_direction(m.prices, needs_output=False) is None
            )
            if not serving:
                raise _bad(
                    "Name the moderation model in 'model': no moderation model in this "
                    "gateway's catalog is one this key may use and has a price.",
                    param="model",
                    code="missing_required_parameter",
                )
            body["model"] = serving[0]
        return body


def _model_entries(principal, catalog):
    entries = []
    for model in sorted(catalog.models.values(), key=lambda m: m.name):
        if principal.may_use(model.name):
            entries.append(
                {
                    "id": model.name,
                    "object": "model",
                    "created": model.created,
                    "owned_by": model.provider.name,
                    # Beyond OpenAI's fields (the SDKs keep unknown ones): where it is served.
                    "endpoints": list(model.served),
                }
            )
    for route in catalog.routes_for(team_id=principal.team_id):
        # A model's name always means the model, so a route under it is unreachable.
        if route.name not in catalog.models and route_allowed(principal, route):
            served = {
                e for t in route.targets if t in catalog.models for e in catalog.models[t].served
            }
            entries.append(
                {
                    "id": route.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tollgate-route",
                    # Where any of its targets is served: a call there goes to those targets.
                    "endpoints": [e for e in ENDPOINTS if e in served],
                }
            )
    return entries


class ModelListView(ProxyView):
    @extend_schema(
        operation_id="listModels",
        summary="The models and routes this key may call",
        description="Catalog models first (by name), then the routes the key may use.",
        tags=openapi.TAGS,
        responses={
            200: OpenApiResponse(response=openapi.ref("ModelList"), description="The list."),
            401: openapi.UNAUTHORIZED,
        },
        parameters=[openapi.REQUEST_ID],
    )
    async def get(self, request):
        entries = _model_entries(request.user, await catalog_snapshot_async())
        return JsonResponse({"object": "list", "data": entries})


class ModelDetailView(ProxyView):
    @extend_schema(
        operation_id="retrieveModel",
        summary="One model or route this key may call",
        description="404 for a model or route the key may not use, as for an unknown one.",
        tags=openapi.TAGS,
        responses={
            200: OpenApiResponse(response=openapi.ref("Model"), description="The model."),
            401: openapi.UNAUTHORIZED,
            404: openapi.CALL_ERRORS[404],
        },
        parameters=[
            OpenApiParameter(
                "model_id",
                OpenApiTypes.STR,
                OpenApiParameter.PATH,
                description="A model id or route name; it may hold '/'.",
            ),
            openapi.REQUEST_ID,
        ],
    )
    async def get(self, request, model_id):
        entries = _model_entries(request.user, await catalog_snapshot_async())
        for entry in entries:
            if entry["id"] == model_id:
                return JsonResponse(entry)
        raise ProxyError(
            404,
            f"The model `{model_id}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


@csrf_exempt
async def unknown_endpoint(request, path=""):
    response = openai_error_response(
        ProxyError(404, f"Unknown request URL: {request.method} /v1/{path}.", code="unknown_url")
    )
    response["x-request-id"] = request_id = new_request_id()
    response._has_been_logged = True
    log_unmetered(
        request_id=request_id, http_status=404, path=request.path, payload=_json_payload(response)
    )
    return response


def _json_payload(response) -> object:
    try:
        return json.loads(response.content)
    except (ValueError, AttributeError):
        return None
