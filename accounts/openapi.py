"""How /api/schema/ describes the bearer-key authentications (drf-spectacular extensions).

Imported by AccountsConfig.ready(): an extension counts only once its module is loaded.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class _BearerKeyScheme(OpenApiAuthenticationExtension):
    description: str

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": self.description}


class ManagementKeyScheme(_BearerKeyScheme):
    target_class = "accounts.authentication.ManagementKeyAuthentication"
    name = "managementKey"
    description = (
        "A management key (`tgm_…`, from `issuekey SLUG --management`) as "
        "`Authorization: Bearer <key>`. It acts on its own team with its role; "
        "it cannot call /v1."
    )


class InferenceKeyScheme(_BearerKeyScheme):
    target_class = "accounts.authentication.InferenceKeyAuthentication"
    name = "inferenceKey"
    description = (
        "An inference key (`tgk_…`, from `issuekey SLUG`) as `Authorization: Bearer <key>`, "
        "as the OpenAI SDKs send it. It cannot call /api."
    )


# What /api answers when it refuses, in DRF's shape, for every /api operation.
API_ERROR = {
    "type": "object",
    "description": (
        'DRF\'s error shape: `{"detail": "<message>"}`, or for invalid input '
        '`{"<field>": ["<message>", …]}`.'
    ),
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": True,
}
API_ERRORS = {
    "400": "Invalid input: a field, a filter or a date that is not one.",
    "401": "No valid credentials (a management key or a session).",
    "403": "Your role in this team may not do this.",
    "404": "No such team, or not yours (the same answer: existence does not leak), or no "
    "such object in it.",
}


def api_error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook: every /api operation documents the errors it
    can answer, in DRF's shape."""
    result.setdefault("components", {}).setdefault("schemas", {})["ApiError"] = API_ERROR
    reference = {"$ref": "#/components/schemas/ApiError"}
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in API_ERRORS.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": reference}},
                    },
                )
    return result
