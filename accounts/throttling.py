"""Sign-in throttling: django-axes' database handler with one change (settings.AXES_HANDLER)."""

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username
from axes.models import AccessAttempt


class AccountResetHandler(AxesDatabaseHandler):
    """A successful sign-in forgets the failures of the account that signed in, and no others.

    django-axes' own handler, with AXES_RESET_ON_SUCCESS and lockout by username or by
    address, forgets every failure from the signing-in address too, another account's
    included: someone with any account could then guess another's password four times,
    sign in to their own, and guess again, never reaching the limit.
    """

    def reset_user_attempts(self, request, credentials=None) -> int:
        username = get_client_username(request, credentials)
        if not username:
            return 0
        count, _ = AccessAttempt.objects.filter(username=username).delete()
        return count
