"""Sign-ins in the audit log (each success and failure, with the address it came from), and
API keys dropped from every process's cache when they change."""

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.audit import audit
from accounts.models import ApiKey


@receiver(user_logged_in, dispatch_uid="audit-sign-in")
def _signed_in(sender, request, user, **kwargs):
    audit(team=None, action="signin.success", target=user.get_username(), actor=user.get_username())


@receiver(user_login_failed, dispatch_uid="audit-sign-in-failed")
def _sign_in_failed(sender, credentials, request=None, **kwargs):
    # The name typed, as typed (cut short); never the password, which Django has masked.
    name = str(credentials.get("username", ""))[:150]
    audit(team=None, action="signin.failure", target=name, actor=f"anonymous ({name})")


@receiver(post_save, sender=ApiKey, dispatch_uid="key-cache-on-save")
@receiver(post_delete, sender=ApiKey, dispatch_uid="key-cache-on-delete")
def _key_changed(sender, instance, created=False, **kwargs):
    """However a key is changed (revoked, edited in the admin, deleted), every process stops
    using what it cached of it: at once, and again once the change commits (a call that read
    the key meanwhile must not cache it as it was)."""
    from accounts.services import _principal_forget

    if created:
        return
    _principal_forget(instance.prefix)
    transaction.on_commit(lambda: _principal_forget(instance.prefix))
