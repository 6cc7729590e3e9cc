"""The web UI's forms for keys and people: every rule a team admin can break is checked here,
and each message names the field and says what to do."""

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AuthenticationForm

from accounts.models import ApiKey, Membership
from accounts.permissions import management_key_roles
from accounts.selectors import user_by_email


class SignInForm(AuthenticationForm):
    """Sign-in by email address, in any case: the address typed is resolved to its account's
    stored username before the password is checked, so the lockout counts one account's
    failures together however its address is written."""

    def clean_username(self):
        typed = self.cleaned_data["username"].strip()
        User = get_user_model()
        if User.objects.filter(username=typed).exists():
            return typed
        user = user_by_email(email=typed)
        return user.get_username() if user is not None else typed.lower()


# PostgreSQL's integer: the largest limit a key can store.
LIMIT_MAX = 2_147_483_647


class InferenceKeyForm(forms.Form):
    """An inference key: what it may call (from the catalog), what it may spend, how fast, and
    until when. Models and routes are offered as checkboxes; a name not offered is refused."""

    name = forms.CharField(
        max_length=100,
        error_messages={"required": "Give the key a name of up to 100 characters."},
        help_text="For people: e.g. support-bot.",
    )
    models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"invalid_choice": "“%(value)s” is not a model in the catalog."},
    )
    routes = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"invalid_choice": "“%(value)s” is not a route this team can use."},
    )
    budget_usd = forms.DecimalField(
        label="Monthly budget (USD)",
        required=False,
        min_value=Decimal(0),
        max_digits=12,
        decimal_places=2,
        help_text="Empty: no budget of its own (the team's budget still applies).",
        widget=forms.NumberInput(attrs={"step": "0.01", "min": "0", "inputmode": "decimal"}),
    )
    budget_kind = forms.ChoiceField(
        label="When the budget is reached",
        choices=[("hard", "Refuse calls (hard)"), ("soft", "Alert only (soft)")],
        initial="hard",
        widget=forms.RadioSelect,
    )
    rpm_limit = forms.IntegerField(
        label="Requests per minute",
        required=False,
        min_value=1,
        max_value=LIMIT_MAX,
        help_text="Empty: no limit.",
    )
    tpm_limit = forms.IntegerField(
        label="Tokens per minute",
        required=False,
        min_value=1,
        max_value=LIMIT_MAX,
        help_text="Empty: no limit.",
    )
    expires_on = forms.DateField(
        label="Expires on (UTC)",
        required=False,
        help_text="The key stops working at 00:00 UTC that day. Empty: never.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def __init__(self, *args, models: list[str], routes: list[str], now: datetime, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["models"].choices = [(m, m) for m in models]
        self.fields["routes"].choices = [(r, r) for r in routes]
        self.today = now.astimezone(UTC).date()
        self.fields["expires_on"].widget.attrs["min"] = (self.today + timedelta(days=1)).isoformat()

    def clean_expires_on(self) -> date | None:
        day = self.cleaned_data["expires_on"]
        if day is not None and day <= self.today:
            raise forms.ValidationError(
                f"Pick a day after today ({self.today:%Y-%m-%d}, UTC), or leave it empty."
            )
        return day

    @property
    def allowed_models(self) -> list[str]:
        return [*self.cleaned_data["models"], *self.cleaned_data["routes"]]

    @property
    def expires_at(self) -> datetime | None:
        day = self.cleaned_data["expires_on"]
        return datetime.combine(day, time.min, tzinfo=UTC) if day else None

    @property
    def budget_hard(self) -> bool:
        return self.cleaned_data["budget_kind"] == "hard"


class ManagementKeyForm(forms.Form):
    """A management key for scripts calling /api, acting with the admin or the billing role."""

    name = forms.CharField(
        max_length=100,
        error_messages={"required": "Give the key a name of up to 100 characters."},
        help_text="For people: e.g. nightly-export.",
    )
    role = forms.ChoiceField(
        initial=ApiKey.ManagementRole.ADMIN,
        widget=forms.RadioSelect,
        error_messages={
            "invalid_choice": "Pick one of the roles offered: a management key is admin or "
            "billing, and only an owner issues billing keys."
        },
    )

    ROLE_LABELS = {
        ApiKey.ManagementRole.ADMIN: "Admin: manage keys, routes and budgets",
        ApiKey.ManagementRole.BILLING: "Billing: read usage and invoices only",
    }

    def __init__(self, *args, actor_role: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [
            (role, self.ROLE_LABELS[role]) for role in management_key_roles(actor_role)
        ]


ROLE_LABELS = {
    Membership.Role.OWNER: "Owner: everything, including owners and invoices",
    Membership.Role.ADMIN: "Admin: keys, routes, budgets and people",
    Membership.Role.BILLING: "Billing: usage, budgets and invoices",
    Membership.Role.MEMBER: "Member: usage only",
}


def grantable_roles(actor_role: str) -> list[str]:
    """The roles `actor_role` may give: an admin may not make an owner."""
    return [
        role
        for role in Membership.Role.values
        if actor_role == Membership.Role.OWNER or role != Membership.Role.OWNER
    ]


class InvitationForm(forms.Form):
    email = forms.EmailField(
        label="Email address",
        max_length=254,
        error_messages={"required": "Enter the email address to send the invitation to."},
    )
    role = forms.ChoiceField(
        error_messages={"invalid_choice": "Pick one of the roles offered."},
        widget=forms.RadioSelect,
        initial=Membership.Role.MEMBER,
    )

    def __init__(self, *args, actor_role: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r, ROLE_LABELS[r]) for r in grantable_roles(actor_role)]


class NewAccountForm(forms.Form):
    """The password of an account made by accepting an invitation, checked by Django's
    password validators against the new account's address."""

    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    password2 = forms.CharField(
        label="The same password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args, email: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.email = email
        self.fields["password1"].help_text = " ".join(
            password_validation.password_validators_help_texts()
        )

    def clean(self):
        cleaned = super().clean()
        first, second = cleaned.get("password1"), cleaned.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords differ.")
        elif first:
            user = get_user_model()(username=self.email, email=self.email)
            try:
                password_validation.validate_password(first, user)
            except forms.ValidationError as error:
                self.add_error("password1", error)
        return cleaned
