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
