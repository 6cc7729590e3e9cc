"""Sign-ins in the audit log: each success and failure, with the address it came from."""

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

from accounts.audit import audit


@receiver(user_logged_in, dispatch_uid="audit-sign-in")
def _signed_in(sender, request, user, **kwargs):
    audit(team=None, action="signin.success", target=user.get_username(), actor=user.get_username())


@receiver(user_login_failed, dispatch_uid="audit-sign-in-failed")
def _sign_in_failed(sender, credentials, request=None, **kwargs):
    # The name typed, as typed (cut short); never the password, which Django has masked.
    name = str(credentials.get("username", ""))[:150]
    audit(team=None, action="signin.failure", target=name, actor=f"anonymous ({name})")
