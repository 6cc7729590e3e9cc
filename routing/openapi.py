"""How /api/schema/ describes /v1: OpenAI's request and response shapes, as the proxy speaks them.

The proxy validates only what it must (routing.proxy.validate_*) and passes every other
field through to the upstream, so the request schemas name what the gateway checks and
allow the rest. Answers are the upstream's, with `model` set to the catalog model that
served the call. The shapes are JSON Schema components added by `v1_components` (a
drf-spectacular postprocessing hook); the views reference them through the constants here.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse

from routing.selectors import ENDPOINTS


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


_POSITIVE_INT = {"type": "integer", "minimum": 1}
_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer"}}

SCHEMAS = {
    "OpenAIError": {
        "type": "object",
        "description": (
            "OpenAI's error shape. The gateway's own errors carry all four fields; an error "
            "an upstream answered in this shape is passed on as the upstream wrote it."
        ),
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": {"type": "string", "description": "A sentence for the developer."},
                    "type": {
                        "type": "string",
                        "description": "invalid_request_error, permission_error, "
                        "rate_limit_error, requests, tokens, insufficient_quota, "
                        "upstream_error, service_unavailable, timeout_error, server_error",
                    },
                    "param": _nullable({"type": "string", "description": "The field at fault."}),
                    "code": _nullable(
                        {
                            "type": "string",
                            "description": "e.g. invalid_api_key, model_not_found, "
                            "model_not_allowed, rate_limit_exceeded, insufficient_quota, "
                            "request_too_large, upstream_timeout",
                        }
                    ),
                },
            }
        },
    },
    "ChatMessage": {
        "type": "object",
        "required": ["role"],
        "additionalProperties": True,
        "properties": {
            "role": {"type": "string", "example": "user"},
            "content": _nullable(
                {
                    "oneOf": [
                        {"type": "string"},
                        {
                            "type": "array",
                            "items": {"type": "object", "additionalProperties": True},
                            "description": "Content parts (text, image_url, …).",
                        },
                    ]
                }
            ),
            "name": {"type": "string"},
            "tool_calls": {"type": "array", "items": {"type": "object"}},
            "tool_call_id": {"type": "string"},
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "description": (
            "OpenAI's chat completion request. Fields not listed (temperature, tools, "
            "response_format, …) are passed to the upstream unchanged. A request that sets "
            "none of max_tokens and max_completion_tokens is sent with the output limit its "
            "budget reservation assumed."
        ),
        "additionalProperties": True,
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "A model id or a route name, as GET /v1/models lists them.",
            },
            "messages": {"type": "array", "minItems": 1, "items": ref("ChatMessage")},
            "stream": _nullable(
                {"type": "boolean", "description": "true answers with server-sent events."}
            ),
            "stream_options": _nullable(
                {
                    "type": "object",
                    "additionalProperties": True,
                    "properties": {
                        "include_usage": {
                            "type": "boolean",
                            "description": "Send the usage chunk at the end of the stream.",
                        }
                    },
                }
            ),
            "max_tokens": _nullable(_POSITIVE_INT),
            "max_completion_tokens": _nullable(_POSITIVE_INT),
            "n": _nullable(_POSITIVE_INT),
            "user": _nullable(
                {
                    "type": "string",
                    "description": "Your end user; kept (256 characters) on the usage row.",
                }
            ),
        },
    },
    "ChatCompletionUsage": {
        "type": "object",
        "additionalProperties": True,
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
            "prompt_tokens_details": _nullable({"type": "object", "additionalProperties": True}),
            "completion_tokens_details": _nullable(
                {"type": "object", "additionalProperties": True}
            ),
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "additionalProperties": True,
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer", "description": "Unix seconds."},
            "model": {"type": "string", "description": "The catalog model that served the call."},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": True,
                    "properties": {
                        "index": {"type": "integer"},
                        "message": ref("ChatMessage"),
                        "finish_reason": _nullable({"type": "string"}),
                        "logprobs": _nullable({"type": "object", "additionalProperties": True}),
                    },
                },
            },
            "usage": ref("ChatCompletionUsage"),
            "system_fingerprint": _nullable({"type": "string"}),
        },
    },
    "ChatCompletionChunk": {
        "type": "object",
        "description": "One event of a streamed answer (the `data:` of an SSE event).",
        "required": ["id", "object", "created", "model", "choices"],
        "additionalProperties": True,
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion.chunk"]},
            "created": {"type": "integer"},
            "model": {"type": "string", "description": "The catalog model that served the call."},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": True,
                    "properties": {
                        "index": {"type": "integer"},
                        "delta": {"type": "object", "additionalProperties": True},
                        "finish_reason": _nullable({"type": "string"}),
                    },
                },
            },
            "usage": _nullable(
                {
                    "allOf": [ref("ChatCompletionUsage")],
                    "description": "Only with stream_options.include_usage, in the last chunk.",
                }
            ),
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "description": (
            "OpenAI's legacy text completion request, for models whose catalog entry lists "
            "`completions`. Fields not listed (temperature, suffix, echo, logprobs, …) are "
            "passed to the upstream unchanged; best_of completions are reserved and billed."
        ),
        "additionalProperties": True,
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 200},
            "prompt": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    _TOKEN_IDS,
                    {"type": "array", "minItems": 1, "items": _TOKEN_IDS},
                ]
            },
            "max_tokens": _nullable({"type": "integer", "minimum": 1}),
            "n": _nullable({"type": "integer", "minimum": 1, "maximum": 128}),
            "best_of": _nullable({"type": "integer", "minimum": 1, "maximum": 128}),
            "stream": _nullable({"type": "boolean"}),
        },
    },
    "Completion": {
        "type": "object",
        "required": ["object", "choices"],
        "additionalProperties": True,
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["text_completion"]},
            "model": {"type": "string", "description": "The catalog model that served it."},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": True,
                    "properties": {"text": {"type": "string"}, "index": {"type": "integer"}},
                },
            },
            "usage": {"type": "object", "additionalProperties": True},
        },
    },
    "ResponseRequest": {
        "type": "object",
        "required": ["model", "input"],
        "description": "OpenAI's Responses API request. Other fields are passed on to a "
        "native upstream; the bridge reads those listed.",
        "additionalProperties": True,
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 200},
            "input": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "items": {"type": "object"}},
                ]
            },
            "instructions": _nullable({"type": "string"}),
            "tools": {"type": "array", "items": {"type": "object"}},
            "tool_choice": {},
            "max_output_tokens": _nullable({"type": "integer", "minimum": 1}),
            "text": {"type": "object"},
            "stream": _nullable({"type": "boolean"}),
        },
    },
    "Response": {
        "type": "object",
        "required": ["id", "object", "output"],
        "additionalProperties": True,
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["response"]},
            "status": {"type": "string"},
            "model": {"type": "string", "description": "The catalog model that served it."},
            "output": {"type": "array", "items": {"type": "object"}},
            "usage": _nullable({"type": "object", "additionalProperties": True}),
        },
    },
    "ModerationRequest": {
        "type": "object",
        "required": ["input"],
        "description": "OpenAI's moderation request; other fields are passed to the upstream.",
        "additionalProperties": True,
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "A catalog model listing `moderations`; without it, the first.",
            },
            "input": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    {"type": "array", "minItems": 1, "items": {"type": "object"}},
                ]
            },
        },
    },
    "ModerationResult": {
        "type": "object",
        "required": ["results"],
        "additionalProperties": True,
        "properties": {
            "id": {"type": "string"},
            "model": {"type": "string", "description": "The catalog model that served it."},
            "results": {"type": "array", "items": {"type": "object"}},
        },
    },
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "description": "OpenAI's embeddings request; other fields are passed to the upstream.",
        "additionalProperties": True,
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 200},
            "input": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "minLength": 1},
                    },
                    _TOKEN_IDS,
                    {"type": "array", "minItems": 1, "items": _TOKEN_IDS},
                ]
            },
            "encoding_format": {
                "type": "string",
                "enum": ["float", "base64"],
                "default": "float",
            },
            "dimensions": _POSITIVE_INT,
            "user": _nullable({"type": "string"}),
        },
    },
    "EmbeddingList": {
        "type": "object",
        "required": ["object", "data", "model"],
        "additionalProperties": True,
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["object", "index", "embedding"],
                    "properties": {
                        "object": {"type": "string", "enum": ["embedding"]},
                        "index": {"type": "integer"},
                        "embedding": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "description": "With encoding_format base64."},
                            ]
                        },
                    },
                },
            },
            "model": {"type": "string", "description": "The catalog model that served the call."},
            "usage": {
                "type": "object",
                "properties": {
                    "prompt_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                },
            },
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string", "description": "A catalog model id or a route name."},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer", "description": "Unix seconds; 0 for a route."},
            "owned_by": {
                "type": "string",
                "description": "The model's provider, or `tollgate-route` for a route.",
            },
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "string",
                    "enum": list(ENDPOINTS),
                },
                "description": "The /v1 endpoints a model is served on, or a route's targets "
                "are (not OpenAI's field). `responses` on a chat-only upstream is bridged to chat.",
            },
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": ref("Model")},
        },
    },
}


def v1_components(result, generator, request, public):
    """drf-spectacular postprocessing hook: add the /v1 shapes the views refer to, and mark
    /v1 request bodies required (a raw schema cannot say so through extend_schema)."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    for path, operations in result.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                if "requestBody" in operation:
                    operation["requestBody"]["required"] = True
    return result


# --- What the views' extend_schema use ----------------------------------------------

TAGS = ["v1 (OpenAI-compatible)"]


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ref("OpenAIError"), description=description)


def _header(name: str, description: str, codes) -> OpenApiParameter:
    return OpenApiParameter(
        name,
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=codes,
        description=description,
    )


REQUEST_ID = _header(
    "x-request-id",
    "This request's id (`req_…`), as the usage ledger records it. On every response.",
    True,
)
CALL_HEADERS = [
    REQUEST_ID,
    _header(
        "x-tollgate-cost",
        "This call's charge in USD, a decimal string (e.g. `0.00000525`). "
        "Not on a streamed answer, whose cost is known only at its end.",
        [200],
    ),
    _header("x-tollgate-model", "The catalog model that actually served the call.", [200]),
    _header("x-tollgate-route", "The route asked for, when `model` named a route.", [200]),
    *[
        _header(
            f"x-ratelimit-{field}-{kind}",
            f"The key's {kind}-per-minute {field}{' (e.g. 42s)' if field == 'reset' else ''}; "
            f"only when the key has {'an RPM' if kind == 'requests' else 'a TPM'} limit.",
            [200, 429],
        )
        for kind in ("requests", "tokens")
        for field in ("limit", "remaining", "reset")
    ],
    _header("Retry-After", "Seconds to wait, on a rate-limited 429.", [429]),
    _header("x-should-retry", "`false` on an over-budget 429 (insufficient_quota).", [429]),
]

UNAUTHORIZED = _error(
    "No key, an unknown, revoked or expired key, or a management key (code invalid_api_key)."
)
CALL_ERRORS = {
    400: _error(
        "The body is not JSON or breaks a rule of the request schema; the model does not support this endpoint, "
        "has no price, or no target of the route can serve the request; or the upstream "
        "refused the request (its error passed on)."
    ),
    401: UNAUTHORIZED,
    403: _error("The key may not use this model or route (code model_not_allowed)."),
    404: _error("No such model or route (code model_not_found)."),
    413: _error("The body is larger than TOLLGATE_MAX_BODY_BYTES (code request_too_large)."),
    422: _error("The upstream refused the request as unprocessable (its error passed on)."),
    429: _error(
        "The key's rate limit (type requests or tokens, code rate_limit_exceeded, with "
        "Retry-After), the budget (type and code insufficient_quota, x-should-retry: false), "
        "or the upstream's own rate limit (code upstream_rate_limited)."
    ),
    502: _error("Every upstream tried failed, could not be reached or answered malformed."),
    503: _error("The serving model's provider is not configured (code provider_not_configured)."),
    504: _error("No upstream answered within the call's deadline."),
}

COMPLETION_RESPONSES = {
    (200, "application/json"): OpenApiResponse(
        response=ref("Completion"),
        description="The completion as JSON; with `stream: true`, server-sent events.",
    ),
    (200, "text/event-stream"): {
        "type": "string",
        "description": "With `stream: true`: events `data: <Completion chunk>` and a final "
        "`data: [DONE]`.",
    },
    **CALL_ERRORS,
}

CHAT_RESPONSES = {
    (200, "application/json"): OpenApiResponse(
        response=ref("ChatCompletion"),
        description="The answer as JSON; with `stream: true`, server-sent events.",
    ),
    (200, "text/event-stream"): {
        "type": "string",
        "description": (
            "With `stream: true`: events `data: <ChatCompletionChunk>` and a final "
            "`data: [DONE]`. An error after the stream began is sent as one event "
            "`data: <OpenAIError>` instead of [DONE]."
        ),
        "example": 'data: {"id":"chatcmpl-1","object":"chat.completion.chunk",…}\n\n'
        "data: [DONE]\n\n",
    },
    **CALL_ERRORS,
}
