"""DRF authentication by bearer API key: inference keys for /v1, management keys for /api."""

from rest_framework import authentication, exceptions

from accounts.models import ApiKey
from accounts.services import InvalidKey, api_key_authenticate, api_key_authenticate_async


class _BearerKeyAuthentication(authentication.BaseAuthentication):
    kind: str
    wrong_kind_message: str

    def authenticate(self, request):
        secret = self._secret(request)
        if secret is None:
            return None
        try:
            return self._checked(api_key_authenticate(secret=secret))
        except InvalidKey as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None

    async def authenticate_async(self, request):
        """`authenticate` on the event loop (no thread hop): the /v1 views'."""
        secret = self._secret(request)
        if secret is None:
            return None
        try:
            return self._checked(await api_key_authenticate_async(secret=secret))
        except InvalidKey as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None

    def _secret(self, request) -> str | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise exceptions.AuthenticationFailed(
                "Send your API key as 'Authorization: Bearer <key>'."
            )
        return secret

    def _checked(self, principal):
        if principal.kind != self.kind:
            raise exceptions.AuthenticationFailed(self.wrong_kind_message)
        return principal, principal

    def authenticate_header(self, request):
        return "Bearer"


class InferenceKeyAuthentication(_BearerKeyAuthentication):
    kind = ApiKey.Kind.INFERENCE
    wrong_kind_message = "Management keys cannot call /v1; use an inference key."


class ManagementKeyAuthentication(_BearerKeyAuthentication):
    kind = ApiKey.Kind.MANAGEMENT
    wrong_kind_message = "Inference keys cannot call the management API; use a management key."
