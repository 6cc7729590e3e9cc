from django.conf import settings
from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from accounts import views
from accounts.forms import SignInForm

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="accounts/login.html",
            authentication_form=SignInForm,
            # What the page tells someone who mistyped: when sign-in pauses, for how long.
            extra_context={
                "failure_limit": settings.AXES_FAILURE_LIMIT,
                "cooloff": settings.AXES_COOLOFF_TIME,
            },
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Password reset by email, with Django's own views; the link is built from the request's host.
    path(
        "password-reset/",
        auth_views.PasswordResetView.as_view(
            template_name="accounts/password_reset.html",
            subject_template_name="accounts/email/password_reset_subject.txt",
            email_template_name="accounts/email/password_reset_body.txt",
            html_email_template_name="accounts/email/password_reset_body.html",
            success_url=reverse_lazy("password-reset-sent"),
        ),
        name="password-reset",
    ),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="accounts/password_reset_sent.html"),
        name="password-reset-sent",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        views.PasswordResetConfirm.as_view(),
        name="password-reset-confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(
            template_name="accounts/password_reset_complete.html"
        ),
        name="password-reset-complete",
    ),
    path("t/<slug:slug>/keys/", views.keys, name="keys"),
    path("t/<slug:slug>/keys/<str:prefix>/revoke/", views.key_revoke, name="key-revoke"),
    path("t/<slug:slug>/people/", views.people, name="people"),
    path("t/<slug:slug>/audit/", views.audit_log, name="audit-log"),
    path("t/<slug:slug>/people/<int:membership_id>/role/", views.member_role, name="member-role"),
    path(
        "t/<slug:slug>/people/<int:membership_id>/remove/",
        views.member_remove,
        name="member-remove",
    ),
    path(
        "t/<slug:slug>/people/invitations/<int:invitation_id>/revoke/",
        views.invitation_withdraw,
        name="invitation-revoke",
    ),
    path("invitations/<str:token>/", views.invitation_accept_page, name="invitation-accept"),
]
